// ThreadPool: a fixed set of workers that run one parallel job at a time, fork-join style.
// Owns its threads. The caller thread takes part as thread 0, so a pool of n uses n-1 workers.
// Workers spin briefly then sleep (futex via std::atomic::wait), so dispatch costs microseconds
// while a busy decode loop runs and nothing while the process idles.
// Not thread-safe: one caller at a time may call run().
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <thread>
#include <vector>

namespace kvstash {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return n_threads_; }
  // Runs fn(ith, nth) on every thread (ith in [0, nth)) and returns when all are done.
  // fn must not throw. No allocation: fn is borrowed for the duration of the call.
  template <typename F>
  void run(F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run_raw([](void* ctx, int ith, int nth) { (*static_cast<Fn*>(ctx))(ith, nth); }, const_cast<void*>(static_cast<const void*>(&fn)));
  }
  void run_raw(void (*fn)(void* ctx, int ith, int nth), void* ctx);

  // Default thread count: the number of CPUs this process may run on.
  static int default_threads();

 private:
  void worker_main(int ith);

  int n_threads_;
  std::vector<std::thread> workers_;
  void (*job_fn_)(void*, int, int) = nullptr;
  void* job_ctx_ = nullptr;
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int> n_done_{0};
  std::atomic<bool> stop_{false};
};

// Splits [0, n) into nth contiguous parts, rounded to multiples of `grain`; returns part ith.
inline void split_range(int64_t n, int ith, int nth, int64_t grain, int64_t* begin, int64_t* end) {
  const int64_t n_chunks = (n + grain - 1) / grain;
  const int64_t c0 = n_chunks * ith / nth, c1 = n_chunks * (ith + 1) / nth;
  *begin = c0 * grain < n ? c0 * grain : n;
  *end = c1 * grain < n ? c1 * grain : n;
}

}  // namespace kvstash
