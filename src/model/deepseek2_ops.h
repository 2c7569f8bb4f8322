// Internals of the deepseek2 forward pass, shared by arch_deepseek2.cpp (loading, cache layout,
// the layer loop, K-shift), deepseek2_attention.cpp (MLA) and moe.cpp (routed + shared experts).
// Not an interface outside src/model. Thread-safe as forward(): one call per scratch at a time.
#pragma once

#include <cstdint>

#include "model/forward.h"
#include "model/layer_ops.h"
#include "model/model.h"

namespace kvstash::ds2 {

// RoPE of the decoupled key/query part, with the model's scaling (YaRN for DeepSeek-V2).
layer_ops::RopeParams rope_params(const Hparams& hp);
// Attention scale: mscale^2 / sqrt(head_dim), mscale = 1 + yarn_log_mul * ln(1 / freq_scale)
// (llama.cpp's deepseek2 graph; head_dim is the decompressed key head, qk_nope + qk_rope).
float kq_scale(const Hparams& hp);

// MLA attention of layer il over micro-batch ub. Reads s.xn [n, n_embd] (attention-normed) and
// s.rope_cs; writes the batch's latent rows into cells ub.cells of the cache, then
// s.attn [n, n_head * head_dim_v] (the input of attn_output), by s.mla_path.
void mla_attention(const Model& m, uint32_t il, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                   const UBatch& ub);

// MoE feed-forward of one layer: x [n, n_embd] (ffn-normed) -> y [n, n_embd] = routed experts,
// weighted and summed in rank order per token, plus the shared experts. x and y must not alias.
void moe_ffn(const Hparams& hp, const Deepseek2Layer& L, ThreadPool& pool, const KernelSet& k, ForwardScratch& s, int32_t n,
             const float* x, float* y);

// The router of one token: logits [n_expert] -> sel [n_expert_used] expert ids (best first) and
// their weights w. tmp holds 2 * n_expert + n_expert_groups floats, idx n_expert ints.
void moe_route(const Hparams& hp, const float* logits, const float* bias, float* tmp, int32_t* idx, int32_t* sel, float* w);

}  // namespace kvstash::ds2
