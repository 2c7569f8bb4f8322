#include "core/membw.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace kvstash {
namespace {

// The probe's kernel reads whole 32-value blocks: the sum is exact and the tail is skipped.
TEST(MemRead, SumCoversWholeBlocksExactly) {
  std::vector<int32_t> v(32 * 5 + 7);
  std::iota(v.begin(), v.end(), -40);
  const int64_t whole = std::accumulate(v.begin(), v.begin() + 32 * 5, int64_t(0));
  EXPECT_EQ(mem_read_sum(v.data(), int64_t(v.size())), whole);
  EXPECT_EQ(mem_read_sum(v.data() + 3, 32), std::accumulate(v.begin() + 3, v.begin() + 35, int64_t(0)));  // unaligned
  EXPECT_EQ(mem_read_sum(v.data(), 31), 0);
}

TEST(MemRead, ProbeRoundsToPagesAndMeasures) {
  ThreadPool pool(2);
  MemReadProbe probe(pool, (size_t(4) << 20) + 1);
  ASSERT_TRUE(probe.ok());
  EXPECT_EQ(probe.bytes(), (size_t(4) << 20) + 4096);
  EXPECT_GT(probe.measure(pool), 0.0);
}

}  // namespace
}  // namespace kvstash
