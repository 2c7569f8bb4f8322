// The forward pass interface shared by architectures: a micro-batch in, K/V rows into the
// cache cells the engine chose, logits out for the tokens that ask for them.
// Owns: ForwardScratch, every buffer a forward pass needs, allocated once per context so the
// decode loop never allocates. Not thread-safe: one forward at a time per scratch.
#pragma once

#include <cstdint>
#include <vector>

#include "core/kernels.h"
#include "core/matmul.h"
#include "core/status.h"
#include "core/threadpool.h"
#include "kv/kv_cache.h"

namespace kvstash {

class Model;

struct UBatch {
  const int32_t* tokens = nullptr;       // [n]
  const int32_t* pos = nullptr;          // [n]
  const SeqId* seq = nullptr;            // [n]
  const uint8_t* want_logits = nullptr;  // [n]; 1 = write this token's logits
  const uint32_t* cells = nullptr;       // [n]; the cache cell each token's K/V goes to (already assigned)
  int32_t n = 0;
};

// How MLA attention (deepseek2) reads the latent cache. Both read the same cache rows, so a state
// file does not depend on the path; results agree within rounding (tests/model/deepseek2_test.cpp).
enum class MlaPath : uint8_t {
  // Queries are projected into the latent space (q_nope through k_b) and attend over the cached
  // rows directly: score = q_rope.k_rope + q_absorbed.latent; the latent-weighted sum is then
  // up-projected by v_b. Cost per cached row: n_head * (n_rot + 2 * n_lora_kv). The default.
  Absorbed = 0,
  // Every cached row of the sequence is decompressed into K (nope part) and V per head, then
  // ordinary multi-head attention runs. Cost per cached row and layer: a decompression of
  // n_head * (head_dim_nope + head_dim_v) * n_lora_kv multiply-adds per forward pass, and
  // n_ctx * n_head * (head_dim_nope + head_dim_v) floats of scratch. A reference path.
  Naive = 1,
};
const char* mla_path_name(MlaPath p);

// Buffers of the deepseek2 forward pass (MLA attention and MoE); empty for other architectures.
// Shapes per micro-batch of n_ub tokens; "slots" are (token, routed expert) pairs.
struct MlaMoeScratch {
  std::vector<float> q_a;       // [n_ub, n_lora_q] q LoRA down-projection, normalized in place
  std::vector<float> kv_a;      // [n_ub, n_lora_kv + n_rot] attn_kv_a_mqa output
  std::vector<float> lat_row;   // [n_rot + n_lora_kv] one cache row before conversion to the cache type
  std::vector<float> q_lat;     // absorbed: [n_ub, n_head, n_rot + n_lora_kv] queries in cache-row order
  std::vector<float> o_lat;     // absorbed: [n_ub, n_head, n_lora_kv] attention output in latent space
  std::vector<uint8_t> acts2;   // [n_ub * n_head, q8_0 row of n_lora_kv] per-head activations
  std::vector<float> lat_rows;  // naive: [n_cells, n_rot + n_lora_kv] one sequence's rows, dequantized
  std::vector<uint8_t> lat_acts;  // naive: [n_cells, q8_0 row of n_lora_kv] their latent parts for q8 weights
  std::vector<float> k_dec;     // naive: [n_cells, n_head, head_dim_nope]
  std::vector<float> v_dec;     // naive: [n_cells, n_head, head_dim_v]
  std::vector<int32_t> seq_toks;  // naive: [n_ub] tokens of the sequence being attended
  // MoE
  std::vector<float> router;    // [n_ub, n_expert] router logits
  std::vector<float> route_tmp; // [n_expert * 2 + n_expert_groups] probabilities, selection scores, group scores
  std::vector<int32_t> route_idx;  // [n_expert] sort indices
  std::vector<int32_t> sel;     // [n_ub, n_expert_used] chosen experts, best first (rank order)
  std::vector<float> sel_w;     // [n_ub, n_expert_used] their weights
  std::vector<int32_t> slot;    // [n_ub, n_expert_used] slot of (token, rank); slots are grouped by expert
  std::vector<int32_t> slot_tok;  // [n_ub * n_expert_used] token of each slot
  std::vector<int32_t> exp_off;   // [n_expert + 1] first slot of each expert
  std::vector<uint8_t> moe_x;   // [n_ub * n_expert_used, act row of n_embd] gathered expert inputs
  std::vector<float> moe_g, moe_u;  // [n_ub * n_expert_used, n_ff_exp]
  std::vector<uint8_t> moe_h;   // [n_ub * n_expert_used, act row of n_ff_exp] silu(g) * u, converted
  std::vector<float> moe_y;     // [n_ub * n_expert_used, n_embd] expert outputs per slot
  std::vector<float> shared;    // [n_ub, n_embd] shared-expert output
  std::vector<GemmTask> tasks;  // per-head / per-expert products of one matmul_tasks call
};

// Queries of one attention call: tokens [i0, i0 + n_tok) (one sequence) x heads [h0, h0 + n_head)
// (all in KV head g's group).
struct AttnWork {
  int32_t i0, n_tok, h0, n_head, g;
};

struct ForwardScratch {
  int32_t n_ub = 0;  // max tokens per micro-batch
  std::vector<float> x, xn, q, k, v, attn, ff_a, ff_b, out;  // activations
  std::vector<uint8_t> acts;                                  // quantized activations
  std::vector<float> rope_cs;                                 // [n_ub, n_rot] cos/sin pairs
  std::vector<float> scores;                                  // deepseek2 naive path: [n_threads, n_cells]
  // K-shift: per thread one head row [head_dim] and its rope table [n_rot]: [n_threads, head_dim + n_rot].
  std::vector<float> kshift;
  std::vector<uint32_t> shift_cells;                          // [n_cells] cells with a pending shift
  std::vector<std::vector<uint32_t>> seq_cells;               // [kMaxSeqs] cells sorted by pos
  std::vector<std::vector<int32_t>> seq_pos;                  // [kMaxSeqs] their positions
  std::vector<int32_t> out_rows;                              // rows that want logits
  // Tiled attention (llama): one work item per (KV head, token tile, head chunk) of a micro-batch.
  std::vector<AttnWork> attn_work;                            // [<= n_ub * n_head]
  std::vector<int32_t> attn_n_vis;                            // [n_ub] keys visible to each token
  std::vector<uint8_t> attn_scratch;                          // [n_threads, attn_scratch_stride] + 64 for alignment
  size_t attn_scratch_stride = 0;                             // AttnScratchLayout bytes, rounded to 64
  MlaPath mla_path = MlaPath::Absorbed;                       // deepseek2 only
  MlaMoeScratch mla;                                          // deepseek2 only
};

// Sizes every buffer for `model`, micro-batches of n_ub tokens, a cache of n_cells, n_threads.
// mla_path selects the deepseek2 attention path (other architectures ignore it); the naive path's
// decompression buffers are only allocated when it is chosen.
void forward_scratch_init(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s,
                          MlaPath mla_path = MlaPath::Absorbed);

// Runs the model on ub; logits of the tokens with want_logits, in batch order, go to
// logits [n_out, n_vocab]. Validation of token ids, positions and cells is the caller's.
void forward(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
             const UBatch& ub, float* logits);

// K-shift: rotates the K rows of every non-empty cell with a pending shift (KvCache::seq_add) by
// cache.cell_shift(c) positions, then clears the pending shifts. RoPE rotations compose, so a row
// rotated at position p and then by delta equals (up to rounding) a row rotated at p + delta.
// Rows of every K type are dequantized, rotated in f32 and stored again with store_row (quantized
// types are requantized, which adds one more rounding). V rows are position-free and untouched.
// MLA latent rows: only the RoPE part rotates; the latent part is untouched where the layout says
// the parts are separately addressable, else (q8_KV) the whole row is requantized.
// Cells are independent, so the result does not depend on the thread count.
void apply_k_shift(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s);

}  // namespace kvstash
