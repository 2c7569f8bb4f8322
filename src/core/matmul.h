// Threaded matrix products over the kernel table.
// Owns nothing: callers pass weights, activations, outputs and scratch.
// Work is split over output rows only, so every element is computed exactly as by a
// single thread (no split-K): results do not depend on the thread count or the batch.
// Not thread-safe per ThreadPool (one caller at a time).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/kernels.h"
#include "core/threadpool.h"

namespace kvstash {

// Activations converted to the format a weight type consumes.
struct Acts {
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
  int64_t n_tok = 0;
};

// Converts x [n_tok, n_cols] (f32) to `act` rows in `scratch` (which must hold
// n_tok * dtype_row_bytes(act, n_cols) bytes); F32 returns x itself without copying.
Acts prepare_acts(ThreadPool& pool, const KernelSet& k, DType act, const float* x, int64_t n_tok, int64_t n_cols,
                  uint8_t* scratch);

struct MatOut {
  const MatRef* w;
  float* y;  // [n_tok, w->n_rows], row stride ldy
  int64_t ldy;
};

// y_i = x W_i^T for each output, in one parallel job. All weights must share act_type_for(type)
// and n_cols, and `acts` must be prepared for that type.
void matmul(ThreadPool& pool, const KernelSet& k, const Acts& acts, std::initializer_list<MatOut> outs);

// One independent product of matmul_tasks: y[t * ldy + r] = dot(w row r, x row t) for t < n_tok,
// where x row t is in act_type_for(w->type) and starts at x + t * x_row_bytes (rows may be strided
// views, e.g. one head of a [n_tok, n_head, dim] buffer). n_tok == 0 tasks are skipped.
struct GemmTask {
  const MatRef* w;
  const uint8_t* x;
  size_t x_row_bytes;
  int64_t n_tok;
  float* y;
  int64_t ldy;
};

// Runs all tasks (each with its own weights and activations: per-head or per-expert products)
// in one parallel job, split over output rows only, so every element is computed exactly as by
// matmul: independent of the thread count, of the other tasks and of n_tok.
void matmul_tasks(ThreadPool& pool, const KernelSet& k, const GemmTask* tasks, size_t n_tasks);

}  // namespace kvstash
