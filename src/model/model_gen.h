// Random-weight model generator (`kvstash mkmodel`): llama.cpp's key and tensor names,
// "pure" quantization (every matrix in the named type; norms F32), vocabulary copied from a
// vocab-only GGUF. Weights are scaled so activations stay finite. Deterministic for a seed.
// Thread-safe: pure function of its arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace kvstash {

struct ModelGenSpec {
  std::string arch = "llama";
  std::string name = "kvstash-random";
  uint32_t n_embd = 64;
  uint32_t n_layer = 2;
  uint32_t n_head = 4;
  uint32_t n_head_kv = 2;
  uint32_t n_ff = 128;
  uint32_t n_ctx_train = 2048;
  uint32_t n_rot = 0;  // 0 = head dim
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied_output = false;
  DType type = DType::F32;
  uint64_t seed = 1;
  std::string vocab_path;  // vocab-only GGUF to copy tokenizer.* keys from

  // ---- deepseek2 only (arch == "deepseek2"; n_rot is qk_rope, 64 when 0) ----
  uint32_t n_lora_q = 0;        // 0: attn_q, else attn_q_a / attn_q_a_norm / attn_q_b
  uint32_t n_lora_kv = 512;
  uint32_t head_dim_nope = 128;
  uint32_t head_dim_v = 128;
  uint32_t n_layer_dense_lead = 1;  // layers with a dense FFN of n_ff; the rest are MoE
  uint32_t n_expert = 8;
  uint32_t n_expert_used = 2;
  uint32_t n_expert_shared = 1;
  uint32_t n_ff_exp = 128;
  uint32_t n_expert_groups = 0;       // > 1: group-limited routing
  uint32_t n_expert_groups_used = 0;
  uint32_t expert_gating = 1;         // 1 softmax, 2 sigmoid (llama.cpp's ids)
  float expert_weights_scale = 1.0f;
  bool expert_weights_norm = false;
  bool exp_probs_bias = false;        // write blk.N.exp_probs_b.bias
  // false: attn_kv_b and key_length/value_length = decompressed heads (what converters wrote
  // before llama.cpp's MLA support). true: split attn_k_b / attn_v_b holding the same values, with
  // key_length/value_length = the latent view and *_mla keys = the heads (newer converters).
  bool mla_split = false;
  bool rope_yarn = false;             // rope.scaling.type = yarn with the fields below
  float rope_scaling_factor = 1.0f;
  uint32_t rope_n_ctx_orig = 4096;
  float yarn_log_mul = 0.0f;          // written as is (converters write 0.1 * mscale_all_dim)
};

// Names of built-in presets, and the spec of one ("tiny-llama", "tinyllama-1.1b", "tiny-deepseek2",
// "deepseek2-1.7b").
std::vector<std::string> model_gen_presets();
Result<ModelGenSpec> model_gen_preset(const std::string& name);

// Writes the model to `path` (via a temporary file and rename).
Status model_gen_write(const ModelGenSpec& spec, const std::string& path);

}  // namespace kvstash
