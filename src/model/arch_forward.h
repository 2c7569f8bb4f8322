// Per-architecture entry points behind the dispatchers of model/forward.h (forward.cpp).
// Internal to src/model: the engine calls forward(), forward_scratch_init() and apply_k_shift().
// Each architecture file (arch_<name>.cpp) defines its three functions; contracts as in forward.h.
#pragma once

#include "model/forward.h"

namespace kvstash {

void forward_scratch_init_llama(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s);
void forward_llama(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s, const UBatch& ub,
                   float* logits);
void apply_k_shift_llama(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s);

// ---- tiled attention calls (tiled_attention.cpp; kernels in core/attention.h) ----
// Tokens per attention call: with a GQA group of 8 heads, each K/V row loaded into a tile serves
// up to 64 queries.
constexpr int32_t kAttnTokTile = 8;
// Sizes s->attn_* for calls of up to kAttnTokTile tokens x one group of n_head / n_head_kv query
// heads, with K rows of head_dim and V rows of v_row_elems elements.
void attn_scratch_init(int32_t n_ub, int n_threads, int32_t n_head, int32_t n_head_kv, int32_t head_dim, int32_t v_row_elems,
                       ForwardScratch* s);
// Fills s.attn_n_vis and s.attn_work for ub; s.seq_pos must hold ub's sequences.
void attn_plan(const UBatch& ub, int32_t n_head, int32_t n_head_kv, int n_threads, ForwardScratch& s);
// Runs the planned calls on the pool (on the caller when macs is small). `base` holds the shared
// fields, with k, v, q and out pointing at KV head 0, token 0, head 0; call w reads KV head w.g at
// k + w.g * k_group_bytes (v likewise).
void attn_run(ThreadPool& pool, const KernelSet& k, ForwardScratch& s, const UBatch& ub, const AttnGroup& base, size_t k_group_bytes,
              size_t v_group_bytes, int64_t macs);

void forward_scratch_init_deepseek2(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s);
void forward_deepseek2(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                       const UBatch& ub, float* logits);
void apply_k_shift_deepseek2(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s);

}  // namespace kvstash
