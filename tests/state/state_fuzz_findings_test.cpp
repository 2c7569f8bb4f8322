// State-file inputs that the fuzzers (issue 6: fuzz/fuzz_state.cpp) or its bounds review found
// mishandled: each must now give a clear error or a defined result, with no undefined behaviour
// (the ASan + UBSan suite runs these too) and no allocation sized by an unchecked field.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "alloc_counter.h"
#include "core/le.h"
#include "state/state.h"
#include "state/state_format.h"

namespace kvstash {
namespace {

ModelFingerprint test_fp() {
  ModelFingerprint fp;
  fp.arch = "llama";
  fp.name = "issue6";
  fp.n_vocab = 10;
  return fp;
}

KvLayout make_layout(uint32_t n_cells, const std::vector<KvLayout::StreamRequest>& streams) {
  KvLayout l;
  const std::string err = KvLayout::make(n_cells, {streams}, &l);
  if (!err.empty()) throw std::runtime_error(err);
  return l;
}

// A file with no tokens whose layout declares 16 GiB rows is valid (it holds no rows); the
// reader sized its row buffer from row_bytes alone, so state_inspect (and with it the server's
// slot restore and /slots/saved listing) asked for 16 GiB.
TEST(StateFuzzFindings, Issue6EmptyFileWithHugeRowsAllocatesNoRowBuffer) {
  const uint32_t kElems = 0xFFFFFFE0u;  // f32: 16 GiB per row
  KvCache cache(make_layout(0, {{KvStream::K, DType::F32, kElems, 1}}));
  std::vector<uint8_t> file;
  BufferSink sink(&file);
  StateSaveOptions opt;
  opt.created_ms = 1;
  ASSERT_TRUE(state_write_all(cache, test_fp(), opt, sink).is_ok());
  ASSERT_LT(file.size(), 512u);

  test::AllocLimit limit(size_t(64) << 20);
  MemSource src(file.data(), file.size());
  Result<StateInfo> info = state_inspect(src);
  EXPECT_EQ(limit.largest_refused(), 0u);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->layout.n_cells(), 0u);
  EXPECT_EQ(info->layout.layer(0).streams[0].row_bytes, size_t(kElems) * 4);

  // Restoring it into a cache of another geometry names the layout field.
  KvCache live(make_layout(4, {{KvStream::K, DType::F32, 64, 1}}));
  MemSource again(file.data(), file.size());
  Result<StateLoadResult> r = state_read_all(live, test_fp(), again, StateLoadOptions{});
  EXPECT_EQ(limit.largest_refused(), 0u);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("elems_per_row"), std::string::npos) << r.status().message();
}

// An empty META payload reached memcpy(nullptr, ..., 0) in MemSource::read_at (undefined even
// for 0 bytes); it must be refused as truncated.
TEST(StateFuzzFindings, Issue6EmptySectionIsRefusedWithoutUndefinedBehaviour) {
  using namespace statefmt;
  MemSource none(nullptr, 0);
  EXPECT_TRUE(none.read_at(0, nullptr, 0).is_ok());

  std::vector<uint8_t> f(kHeaderBytes + kFrameBytes + kTrailerBytes, 0);
  std::memcpy(f.data(), kMagic, 8);
  store_le<uint16_t>(f.data() + 8, kMajor);
  store_le<uint32_t>(f.data() + 12, kEndianMarker);
  store_le<uint32_t>(f.data() + 16, kHeaderBytes);
  store_le<uint32_t>(f.data() + 20, 1);  // one sequence
  store_le<uint64_t>(f.data() + 24, f.size());
  store_le<uint32_t>(f.data() + 32, 6);
  store_le<uint64_t>(f.data() + 56, XXH3_64bits(f.data(), kHeaderBytes));
  store_le<uint32_t>(f.data() + kHeaderBytes, kTagMeta);
  store_le<uint32_t>(f.data() + kHeaderBytes + 4, kFlagRequired);
  store_le<uint64_t>(f.data() + kHeaderBytes + 8, 0);  // payload bytes
  store_le<uint64_t>(f.data() + kHeaderBytes + kFrameBytes, XXH3_64bits(nullptr, 0));
  MemSource src(f.data(), f.size());
  Result<StateInfo> info = state_inspect(src);
  ASSERT_FALSE(info.is_ok());
  EXPECT_EQ(info.status().code(), StatusCode::Corruption);
  EXPECT_EQ(info.status().message(), "state: META section is truncated");
}

// Rows are input: a NaN or inf in a saved f16 row, or an f32 block of denormals (1 / d
// overflows), converted into a q8_0 / q4_0 cache went through an undefined float -> int8 cast.
// The quantizers now saturate out-of-range values and turn NaN into 0.
TEST(StateFuzzFindings, Issue6NonFiniteRowsConvertToDefinedQuantizedRows) {
  KvCache saved(make_layout(4, {{KvStream::K, DType::F16, 64, 2}, {KvStream::V, DType::F32, 64, 2}}));
  saved.cell_assign(0, 0, 0, 3);
  std::vector<float> k(64, 1.0f), v(64, 0.0f);
  k[3] = NAN;        // group 0: amax 1 -> q 127, the NaN -> 0
  k[40] = INFINITY;  // group 1: d = inf, 1 / d = 0, every x * 0 (inf * 0 = NaN) -> 0
  for (int j = 0; j < 32; ++j) v[j] = (j - 8) * 1e-40f;  // group 0: denormals, 1 / d = -inf
  quantize_row_ref(DType::F16, k.data(), saved.row(0, 0, 0), 64);
  quantize_row_ref(DType::F32, v.data(), saved.row(0, 1, 0), 64);
  std::vector<uint8_t> file;
  BufferSink sink(&file);
  ASSERT_TRUE(state_write_seq(saved, 0, test_fp(), StateSaveOptions{}, sink).is_ok());

  KvCache live(make_layout(4, {{KvStream::K, DType::Q8_0, 64, 2}, {KvStream::V, DType::Q4_0, 64, 2}}));
  MemSource src(file.data(), file.size());
  Result<StateLoadResult> r = state_read_seq(live, 0, test_fp(), src, StateLoadOptions{});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->converted);
  std::vector<uint32_t> cells;
  live.seq_cells_sorted(0, &cells);
  ASSERT_EQ(cells.size(), 1u);

  BlockQ8_0 kq[2];
  std::memcpy(kq, live.row(0, 0, cells[0]), sizeof kq);
  EXPECT_EQ(kq[0].d, fp32_to_fp16(1.0f / 127.0f));
  for (int j = 0; j < 32; ++j) EXPECT_EQ(kq[0].qs[j], j == 3 ? 0 : 127) << j;
  EXPECT_EQ(kq[1].d, 0x7C00);  // +inf
  for (int j = 0; j < 32; ++j) EXPECT_EQ(kq[1].qs[j], 0) << j;

  // V group 0: x * (-inf) is +inf below element 8 (nibble 15), NaN at 8 and -inf above (0).
  BlockQ4_0 vq[2];
  std::memcpy(vq, live.row(0, 1, cells[0]), sizeof vq);
  EXPECT_EQ(vq[0].d, 0x8000);  // d = -2.875e-40 rounds to -0 in f16
  for (int j = 0; j < 16; ++j) EXPECT_EQ(vq[0].qs[j], j < 8 ? 0x0F : 0x00) << j;
}

}  // namespace
}  // namespace kvstash
