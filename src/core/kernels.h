// CPU compute kernels: weight x activation products and the small vector ops of attention.
// Owns: the kernel table (portable scalar reference + AVX2/FMA/F16C), chosen once at start-up.
// Batch invariance: every output element y[t][r] is computed by the same sequence of
// operations whatever the number of tokens, the tile it falls in, or the thread that runs it:
// the accumulation order is fixed per row (blocks in order, fixed lanes, fixed final sum).
// There is no split-K. Thread-safe: pure functions over caller-owned memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace kvstash {

// A weight matrix: n_rows rows of n_cols elements; row r starts at data + r * row_bytes.
// Shape [n_rows, n_cols], n_cols contiguous (GGUF ne[0] = n_cols, ne[1] = n_rows).
struct MatRef {
  DType type = DType::F32;
  const uint8_t* data = nullptr;
  int64_t n_rows = 0;
  int64_t n_cols = 0;
  size_t row_bytes = 0;
};

// The activation format a weight type multiplies with: Q8_0 for Q8_0 and Q4_0, F32 otherwise.
DType act_type_for(DType weight);

// y[t * ldy + r] = dot(w row r, x row t) for r in [r0, r1), t in [0, n_tok).
// x rows are in act_type_for(w.type); x row t starts at x + t * x_row_bytes.
using GemmFn = void (*)(const MatRef& w, const uint8_t* x, size_t x_row_bytes, int64_t n_tok, float* y,
                        int64_t ldy, int64_t r0, int64_t r1);

struct KernelSet {
  const char* name;  // "avx2" or "scalar"
  GemmFn gemm_f32;
  GemmFn gemm_f16;
  GemmFn gemm_bf16;
  GemmFn gemm_q8_0;
  GemmFn gemm_q4_0;
  // Activation row quantization f32 -> Q8_0 blocks (n multiple of 32).
  void (*quantize_row_q8_0)(const float* x, void* y, int64_t n);
  // Attention helpers over one cache row of type F32 or F16:
  float (*dot_row)(DType t, const void* row, const float* x, int64_t n);
  void (*axpy_row)(DType t, const void* row, float a, float* y, int64_t n);  // y += a * row
  // Row conversion f32 -> F32/F16 for writing the cache.
  void (*store_row)(DType t, const float* x, void* row, int64_t n);
};

const KernelSet& scalar_kernels();
// nullptr when this build or CPU lacks AVX2/FMA/F16C.
const KernelSet* avx2_kernels();
// The set in use: AVX2 when available unless KVSTASH_KERNELS=scalar is set in the environment.
const KernelSet& active_kernels();

inline GemmFn gemm_for(const KernelSet& k, DType t) {
  switch (t) {
    case DType::F32: return k.gemm_f32;
    case DType::F16: return k.gemm_f16;
    case DType::BF16: return k.gemm_bf16;
    case DType::Q8_0: return k.gemm_q8_0;
    case DType::Q4_0: return k.gemm_q4_0;
  }
  return nullptr;
}

}  // namespace kvstash
