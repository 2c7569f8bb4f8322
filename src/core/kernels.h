// CPU compute kernels: weight x activation products and the small vector ops of attention.
// Owns: the kernel table (portable scalar reference + AVX2/FMA/F16C), chosen once at start-up.
// Batch invariance: every output element y[t][r] is computed by the same sequence of
// operations whatever the number of tokens, the tile it falls in, or the thread that runs it:
// the accumulation order is fixed per row (blocks in order, fixed lanes, fixed final sum).
// There is no split-K. Thread-safe: pure functions over caller-owned memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/attention.h"
#include "core/dtype.h"

namespace kvstash {

// How a weight matrix's bytes are ordered.
//  RowMajor: row r starts at data + r * row_bytes (the GGUF order).
//  Interleaved8 (Q8_0 and Q4_0 only, n_rows a multiple of 8): rows in groups of 8; for each group
//    and each block b in order, one 8-row block: the 8 rows' fp16 scales (16 bytes), then their
//    quants in 4-byte chunks, chunk-major: chunk c holds quant bytes [4c, 4c + 4) of rows 0..7
//    (Q8_0: 8 chunks = elements 4c..4c+3; Q4_0: 4 chunks, low nibbles = elements 4c..4c+3 and high
//    nibbles = 16+4c..16+4c+3). Same total bytes as RowMajor; Interleaved8Geom is the only place
//    its offsets are computed, repack_interleaved8 the only writer.
enum class WeightLayout : uint8_t { RowMajor, Interleaved8 };
constexpr int64_t kInterleaveRows = 8;

// A weight matrix: n_rows rows of n_cols elements, in `layout` (row_bytes is the bytes of one
// row's worth of blocks in either layout). Shape [n_rows, n_cols], n_cols contiguous
// (GGUF ne[0] = n_cols, ne[1] = n_rows).
struct MatRef {
  DType type = DType::F32;
  const uint8_t* data = nullptr;
  int64_t n_rows = 0;
  int64_t n_cols = 0;
  size_t row_bytes = 0;
  WeightLayout layout = WeightLayout::RowMajor;
};

// Byte offsets inside an Interleaved8 matrix of type t (Q8_0 or Q4_0) and row_bytes rb.
struct Interleaved8Geom {
  size_t block_bytes;  // one row's block: 34 (Q8_0) or 18 (Q4_0)
  size_t row_bytes;
  static constexpr size_t kScalesBytes = kInterleaveRows * sizeof(fp16_t);
  static constexpr size_t kChunkBytes = 4;
  // Start of the 8-row block b of group g (rows 8g..8g+7): scales, then quant chunks.
  size_t block(int64_t g, int64_t b) const {
    return size_t(g) * kInterleaveRows * row_bytes + size_t(b) * kInterleaveRows * block_bytes;
  }
  // Offset, inside an 8-row block, of quant chunk c of row j (0 <= j < 8).
  static constexpr size_t chunk(int64_t c, int64_t j) { return kScalesBytes + size_t(c * kInterleaveRows + j) * kChunkBytes; }
  size_t block_stride() const { return kInterleaveRows * block_bytes; }
};
inline Interleaved8Geom interleaved8_geom(DType t, size_t row_bytes) { return {dtype_traits(t).block_bytes, row_bytes}; }

// Whether a matrix of this type and row count can be stored Interleaved8.
inline bool can_interleave8(DType t, int64_t n_rows) {
  return (t == DType::Q8_0 || t == DType::Q4_0) && n_rows > 0 && n_rows % kInterleaveRows == 0;
}
// Writes the n_rows x n_cols RowMajor matrix `src` to `dst` (n_rows * row_bytes bytes, not
// overlapping src) in Interleaved8 order. Requires can_interleave8(t, n_rows).
void repack_interleaved8(DType t, const uint8_t* src, int64_t n_rows, int64_t n_cols, uint8_t* dst);

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
  // ---- attention helpers over one cache head row of n elements ----
  // dot(row, x) for a row of type F32, F16 or BF16 and f32 x [n].
  float (*dot_row)(DType t, const void* row, const float* x, int64_t n);
  // y[n] += a * row, for a row of any cache type (F32, F16, BF16, Q8_0, Q4_0, Q8_KV); quantized
  // rows are dequantized inside the loop, never into a buffer.
  void (*axpy_row)(DType t, const void* row, float a, float* y, int64_t n);
  // Row conversion f32 -> any cache type, for writing the cache. Q8_0/Q4_0/Q8_KV use the reference
  // quantizers (quantize_row_ref); a Q8_KV row is one scaled row, so callers pass one head at a time.
  void (*store_row)(DType t, const float* x, void* row, int64_t n);
  // ---- quantized K rows ----
  // f32 [n] -> one Q8_KV row (4 + n bytes; any n >= 1): the query format for Q8_KV keys.
  void (*quantize_row_q8_kv)(const float* x, void* y, int64_t n);
  // dot(krow, qrow) for a quantized key row of type t (Q8_0, Q4_0 or Q8_KV) and a query row already
  // in vec_dot_type(t) (Q8_0 blocks for Q8_0 / Q4_0, one Q8_KV row for Q8_KV). Integer products per
  // block (Q8_0, Q4_0) or per row (Q8_KV) scaled by the product of the two scales.
  float (*dot_row_q)(DType t, const void* krow, const void* qrow, int64_t n);
  // ---- tiled attention (attention.h) ----
  // The queries of one KV head and one sequence against its visible keys, online softmax over
  // fixed 32-key tiles; batch invariant per query. Any K/V cache type.
  void (*attn)(const AttnGroup& g);
};

// The format a query row is converted to before dot_row_q with a cache row of type t:
// Q8_0 for Q8_0 and Q4_0, Q8_KV for Q8_KV; F32 (no conversion, dot_row) for float types.
DType vec_dot_type(DType t);

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
    case DType::Q8_KV: return nullptr;  // cache-only type, never a weight
  }
  return nullptr;
}

}  // namespace kvstash
