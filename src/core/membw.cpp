#include "core/membw.h"

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace kvstash {

namespace {

__attribute__((target("avx2"))) int64_t read_sum_avx2(const int32_t* p, int64_t n) {
  __m256i acc[4];
  for (auto& v : acc) v = _mm256_setzero_si256();
  for (int64_t i = 0; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) acc[k] = _mm256_add_epi32(acc[k], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8 * k)));
  alignas(32) int32_t out[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi32(_mm256_add_epi32(acc[0], acc[1]), _mm256_add_epi32(acc[2], acc[3])));
  int64_t s = 0;
  for (int32_t v : out) s += v;
  return s;
}

int64_t read_sum_scalar(const int32_t* p, int64_t n) {
  int64_t s[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i + 32 <= n; i += 32)
    for (int k = 0; k < 32; ++k) s[k & 3] += p[i + k];
  return s[0] + s[1] + s[2] + s[3];
}

}  // namespace

int64_t mem_read_sum(const int32_t* p, int64_t n) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2 ? read_sum_avx2(p, n) : read_sum_scalar(p, n);
}

void MemReadProbe::FreeDeleter::operator()(void* p) const { std::free(p); }

MemReadProbe::MemReadProbe(ThreadPool& pool, size_t bytes) {
  bytes = (bytes + 4095) / 4096 * 4096;
  buf_.reset(static_cast<int32_t*>(std::aligned_alloc(4096, bytes)));
  if (!buf_) return;
  bytes_ = bytes;
  const int64_t n = int64_t(bytes / 4);
  int32_t* a = buf_.get();
  pool.run([&](int ith, int nth) {  // first touch by the thread that will read the share
    int64_t i0, i1;
    split_range(n, ith, nth, 1024, &i0, &i1);
    std::memset(a + i0, 1, size_t(i1 - i0) * 4);
  });
}

double MemReadProbe::measure(ThreadPool& pool) {
  if (!buf_) return 0.0;
  const int64_t n = int64_t(bytes_ / 4);
  const int32_t* a = buf_.get();
  std::atomic<int64_t> sink{0};
  const auto t0 = std::chrono::steady_clock::now();
  pool.run([&](int ith, int nth) {
    int64_t i0, i1;
    split_range(n, ith, nth, 1024, &i0, &i1);
    sink.fetch_add(mem_read_sum(a + i0, i1 - i0), std::memory_order_relaxed);
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s > 0 ? double(bytes_) / s : 0.0;
}

}  // namespace kvstash
