// Tiled attention over a KV cache: the queries of one GQA group (several heads and several tokens
// of one sequence) against that sequence's keys, with an online softmax over fixed key tiles.
// Owns: the AttnGroup contract, the per-call scratch geometry (AttnScratchLayout) and the exp the
// softmax uses. Never reads cache bookkeeping: the caller passes the cells and visible counts.
// Thread-safe: pure functions over caller-owned memory; each concurrent call has its own scratch.
//
// Batch invariance: a query's output is a pure function of the query and its visible keys. Key
// tiles are [32 t, 32 t + 32) in absolute key index (cut at the query's own visible count), each
// score, tile max, tile sum and output update is computed by one fixed sequence of operations per
// query, and no value is reduced across queries. So the result does not depend on which other
// queries share the call (heads, tokens, decode vs prefill), on the call's key range or thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace kvstash {

// Keys per tile. Tile boundaries sit at multiples of kAttnKeyTile in key index.
constexpr int32_t kAttnKeyTile = 32;

// One call: n_tok tokens x n_head query heads, all reading the same KV head of one sequence.
// Query (t, h) is q + t * q_tok_stride + h * head_dim ([head_dim] f32, RoPE applied, unscaled);
// its output goes to out + t * out_tok_stride + h * v_dim ([v_dim] f32, overwritten).
// Key j (0 <= j < max_t n_vis[t]) is cell cells[j]: its K row is at k + cells[j] * k_cell_bytes
// (one k_type row of head_dim elements), its V row at v + cells[j] * v_cell_bytes (one v_type row
// of v_row_elems elements, of which [v_elem0, v_elem0 + v_dim) are the values: llama uses the
// whole head row; MLA's latent part follows the RoPE part of the one cache row, and a q8_KV row's
// single scale means the row is decoded whole).
// Token t sees keys [0, n_vis[t]) (the caller applies causality and sequence membership by
// ordering cells by position). A token with n_vis[t] == 0 gets zeros.
// Quantized K (Q8_0, Q4_0, Q8_KV): each query is converted once to vec_dot_type(k_type) by the
// kernel set's own quantizer, and scores are exact integer block dots scaled by the two scales.
struct AttnGroup {
  DType k_type = DType::F16, v_type = DType::F16;
  int32_t head_dim = 0;
  int32_t v_row_elems = 0, v_elem0 = 0, v_dim = 0;
  float scale = 1.0f;  // applied to every dot product before the softmax
  const uint8_t* k = nullptr;
  size_t k_cell_bytes = 0;
  const uint8_t* v = nullptr;
  size_t v_cell_bytes = 0;
  const uint32_t* cells = nullptr;
  const float* q = nullptr;
  size_t q_tok_stride = 0;  // floats
  float* out = nullptr;
  size_t out_tok_stride = 0;  // floats
  int32_t n_tok = 0, n_head = 0;
  const int32_t* n_vis = nullptr;  // [n_tok]
  uint8_t* scratch = nullptr;      // AttnScratchLayout(head_dim, v_row_elems, n_tok * n_head).total_bytes, 64-byte aligned
};

// Scratch of one call, every part 64-byte aligned. The kernels and the scratch sizing both use it.
struct AttnScratchLayout {
  size_t kf_off, kq_off, dk_off, vt_off, qq_off, dq_off, qconv_off, m_off, l_off, p_off, total_bytes;
  int32_t hd_pad;  // head_dim rounded up to 32: int8 rows are zero-padded to it
  int32_t n_sb;    // scale blocks per quantized row: hd_pad / 32 (Q8_0, Q4_0) or 1 (Q8_KV)
  AttnScratchLayout(int32_t head_dim, int32_t v_row_elems, int32_t n_queries);
  //  kf   [head_dim, 32] f32   float K tile, transposed (key index contiguous)
  //  kq   [32, hd_pad] i8      quantized K tile, one zero-padded row per key
  //  dk   [hd_pad / 32, 32] f32 K scales per scale block and key
  //  vt   [32, v_row_elems] f32 V tile
  //  qq   [n_queries, hd_pad] i8, dq [n_queries, hd_pad / 32] f32: quantized queries and scales
  //  qconv                     one query row in vec_dot_type (quantizer output)
  //  m, l [n_queries] f32      running max and running sum
  //  p    [32] f32             one query's tile probabilities
};

// exp(x) for x <= 0 (x = -inf gives 0); values below -87 flush to 0. Cephes' expf polynomial
// evaluated with fma in a fixed order, so the scalar and SIMD kernels agree bit for bit; exact at 0.
float attn_exp_ref(float x);

// The kernels behind KernelSet::attn (kernels.h): the portable reference and the AVX2/FMA/F16C
// version (defined only in builds with AVX2; reached through avx2_kernels()).
void attn_group_scalar(const AttnGroup& g);
void attn_group_avx2(const AttnGroup& g);

}  // namespace kvstash
