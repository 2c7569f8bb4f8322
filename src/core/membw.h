// Memory read bandwidth, measured where it is needed: the roof for decode, which streams every
// weight once per token and writes almost nothing. One source for `kvstash bench` (its "% roof"
// column) and bench/machine_bench (BM_Read).
//
// The probe owns a buffer well beyond the last-level cache, filled once (first touch split over
// the pool, as the weights are read). measure() reads it all with the pool's threads, each a
// contiguous share, with 256-bit loads where the CPU has AVX2; returns bytes per second.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/threadpool.h"

namespace kvstash {

class MemReadProbe {
 public:
  static constexpr size_t kDefaultBytes = size_t(1) << 30;
  // Allocation failure leaves the probe empty: ok() is false and measure() returns 0.
  MemReadProbe(ThreadPool& pool, size_t bytes = kDefaultBytes);
  bool ok() const { return buf_ != nullptr; }
  size_t bytes() const { return bytes_; }
  // One timed pass over the buffer; bytes per second.
  double measure(ThreadPool& pool);

 private:
  struct FreeDeleter {
    void operator()(void* p) const;
  };
  size_t bytes_ = 0;
  std::unique_ptr<int32_t, FreeDeleter> buf_;
};

// Sums n int32 values starting at p (n a multiple of 32 is read whole; the tail is skipped).
int64_t mem_read_sum(const int32_t* p, int64_t n);

}  // namespace kvstash
