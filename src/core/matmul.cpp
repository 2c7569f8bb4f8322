#include "core/matmul.h"

#include <algorithm>
#include <cassert>

namespace kvstash {

Acts prepare_acts(ThreadPool& pool, const KernelSet& k, DType act, const float* x, int64_t n_tok, int64_t n_cols,
                  uint8_t* scratch) {
  if (act == DType::F32) return {reinterpret_cast<const uint8_t*>(x), static_cast<size_t>(n_cols) * sizeof(float), n_tok};
  assert(act == DType::Q8_0);
  const size_t rb = dtype_row_bytes(act, n_cols);
  auto job = [&](int ith, int nth) {
    int64_t t0, t1;
    split_range(n_tok, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; ++t) k.quantize_row_q8_0(x + t * n_cols, scratch + t * rb, n_cols);
  };
  if (n_tok < 4) job(0, 1);
  else pool.run(job);
  return {scratch, rb, n_tok};
}

void matmul(ThreadPool& pool, const KernelSet& k, const Acts& acts, std::initializer_list<MatOut> outs) {
  constexpr int64_t kGrain = 16;  // rows per unit of work; a multiple of every tile height
  // Below this many multiply-adds a dispatch costs more than it saves: run on the caller alone.
  // (The split is over rows only, so the result is the same either way.)
  constexpr int64_t kMinParallelMacs = int64_t(1) << 18;
  int64_t total = 0, macs = 0;
  for (const auto& o : outs) {
    total += (o.w->n_rows + kGrain - 1) / kGrain;
    macs += o.w->n_rows * o.w->n_cols * acts.n_tok;
  }
  auto job = [&](int ith, int nth) {
    int64_t u0, u1;
    split_range(total, ith, nth, 1, &u0, &u1);
    int64_t base = 0;
    for (const auto& o : outs) {
      const int64_t units = (o.w->n_rows + kGrain - 1) / kGrain;
      const int64_t a = std::max(u0, base), b = std::min(u1, base + units);
      if (a < b) {
        const int64_t r0 = (a - base) * kGrain, r1 = std::min(o.w->n_rows, (b - base) * kGrain);
        gemm_for(k, o.w->type)(*o.w, acts.data, acts.row_bytes, acts.n_tok, o.y, o.ldy, r0, r1);
      }
      base += units;
    }
  };
  if (macs < kMinParallelMacs) job(0, 1);
  else pool.run(job);
}

void matmul_tasks(ThreadPool& pool, const KernelSet& k, const GemmTask* tasks, size_t n_tasks) {
  constexpr int64_t kGrain = 16;  // as matmul
  constexpr int64_t kMinParallelMacs = int64_t(1) << 18;
  int64_t total = 0, macs = 0;
  for (size_t i = 0; i < n_tasks; ++i) {
    if (tasks[i].n_tok <= 0) continue;
    total += (tasks[i].w->n_rows + kGrain - 1) / kGrain;
    macs += tasks[i].w->n_rows * tasks[i].w->n_cols * tasks[i].n_tok;
  }
  auto job = [&](int ith, int nth) {
    int64_t u0, u1;
    split_range(total, ith, nth, 1, &u0, &u1);
    int64_t base = 0;
    for (size_t i = 0; i < n_tasks && base < u1; ++i) {
      const GemmTask& t = tasks[i];
      if (t.n_tok <= 0) continue;
      const int64_t units = (t.w->n_rows + kGrain - 1) / kGrain;
      const int64_t a = std::max(u0, base), b = std::min(u1, base + units);
      if (a < b) {
        const int64_t r0 = (a - base) * kGrain, r1 = std::min(t.w->n_rows, (b - base) * kGrain);
        gemm_for(k, t.w->type)(*t.w, t.x, t.x_row_bytes, t.n_tok, t.y, t.ldy, r0, r1);
      }
      base += units;
    }
  };
  if (total == 0) return;
  if (macs < kMinParallelMacs) job(0, 1);
  else pool.run(job);
}

}  // namespace kvstash
