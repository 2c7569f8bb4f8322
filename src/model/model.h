// Model: a loaded GGUF model: hyperparameters, tokenizer and weight views into the mapping.
// Owns: the GgufFile (mmap), the Vocab and the repacked weights. Weights are never dequantized
// whole; Q8_0/Q4_0 matrices used through matmul are copied once at load into the Interleaved8
// layout (core/kernels.h) and their mapped pages released; everything else is a view of the mmap.
// Architectures live in arch_<name>.cpp; Model::from_gguf dispatches on general.architecture.
// Thread-safe after load (read-only).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/status.h"
#include "gguf/gguf_reader.h"
#include "kv/kv_layout.h"
#include "model/vocab.h"
#include "state/state.h"

namespace kvstash {

enum class Arch { Llama, Deepseek2 };
const char* arch_name(Arch a);

// MoE router output function: llama.cpp's `expert_gating_func` ids.
enum class ExpertGating : uint32_t { Softmax = 1, Sigmoid = 2 };
// `rope.scaling.type`: none, linear (positions scaled), yarn (per-dimension ramp).
enum class RopeScaling : uint8_t { None, Linear, Yarn };

struct Hparams {
  uint32_t n_vocab = 0;
  uint32_t n_embd = 0;
  uint32_t n_layer = 0;
  uint32_t n_head = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;  // n_embd / n_head unless the GGUF says otherwise
  uint32_t n_rot = 0;     // rope.dimension_count, <= head_dim
  uint32_t n_ff = 0;
  uint32_t n_ctx_train = 0;
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;

  // ---- RoPE scaling (deepseek2 reads these; llama keeps the defaults) ----
  RopeScaling rope_scaling = RopeScaling::None;
  float rope_freq_scale = 1.0f;   // 1 / rope.scaling.factor
  uint32_t rope_n_ctx_orig = 0;   // rope.scaling.original_context_length (YaRN correction dims)
  float yarn_log_mul = 0.0f;      // rope.scaling.yarn_log_multiplier (converters write 0.1 * mscale_all_dim)
  float yarn_beta_fast = 32.0f;   // rope.scaling.yarn_beta_fast
  float yarn_beta_slow = 1.0f;    // rope.scaling.yarn_beta_slow

  // ---- deepseek2: MLA attention and MoE (0 for llama) ----
  // head_dim is the decompressed key head (qk_nope + qk_rope, e.g. 192) and n_rot its RoPE part (64).
  uint32_t n_lora_q = 0;            // attention.q_lora_rank; 0: queries come from attn_q directly
  uint32_t n_lora_kv = 0;           // attention.kv_lora_rank: latent width (512)
  uint32_t head_dim_v = 0;          // value head after decompression (128)
  uint32_t n_layer_dense_lead = 0;  // leading layers with a dense FFN; the rest are MoE
  uint32_t n_expert = 0;            // routed experts per MoE layer
  uint32_t n_expert_used = 0;       // experts each token is routed to (top-k)
  uint32_t n_expert_shared = 0;     // shared experts (one SwiGLU of n_ff_exp * n_expert_shared)
  uint32_t n_ff_exp = 0;            // expert_feed_forward_length
  uint32_t n_expert_groups = 0;     // expert_group_count; > 1 enables group-limited routing
  uint32_t n_expert_groups_used = 0;  // expert_group_used_count
  float expert_weights_scale = 1.0f;  // routed weights are multiplied by this (0 or 1: not scaled)
  bool expert_weights_norm = false;   // routed weights are divided by their sum
  ExpertGating expert_gating = ExpertGating::Softmax;

  uint32_t head_dim_nope() const { return head_dim - n_rot; }
  uint32_t mla_row_elems() const { return n_rot + n_lora_kv; }  // one latent cache row
};

struct LlamaLayer {
  const float* attn_norm = nullptr;  // [n_embd]
  const float* ffn_norm = nullptr;   // [n_embd]
  MatRef wq, wk, wv, wo;             // [n_head*head_dim, n_embd], [n_head_kv*head_dim, n_embd] x2, [n_embd, n_head*head_dim]
  MatRef w_gate, w_up, w_down;       // [n_ff, n_embd] x2, [n_embd, n_ff]
};

// One deepseek2 layer. Per-head matrices are views into 3-D tensors (or into attn_kv_b), except
// k_b (from attn_kv_b) and k_dec (from split attn_k_b), which are transposed copies owned by the
// Model (see load_deepseek2 for their memory cost).
struct Deepseek2Layer {
  const float* attn_norm = nullptr;  // [n_embd]
  const float* ffn_norm = nullptr;   // [n_embd]
  const float* q_a_norm = nullptr;   // [n_lora_q]; q LoRA only
  const float* kv_a_norm = nullptr;  // [n_lora_kv]
  MatRef wq;                         // no q LoRA: [n_head * head_dim, n_embd]; per head nope dims, then rope dims
  MatRef wq_a, wq_b;                 // q LoRA: [n_lora_q, n_embd], [n_head * head_dim, n_lora_q]
  MatRef wkv_a;                      // attn_kv_a_mqa [n_lora_kv + n_rot, n_embd]: latent rows, then rope rows
  std::vector<MatRef> k_b;           // [n_head] x [n_lora_kv, head_dim_nope]: q_nope -> latent space (absorbed path)
  std::vector<MatRef> k_dec;         // [n_head] x [head_dim_nope, n_lora_kv]: latent -> k_nope (naive path)
  std::vector<MatRef> v_b;           // [n_head] x [head_dim_v, n_lora_kv]: latent -> value (both paths)
  MatRef wo;                         // [n_embd, n_head * head_dim_v]
  bool moe = false;                  // false: dense FFN (w_gate/w_up/w_down)
  MatRef w_gate, w_up, w_down;       // dense: [n_ff, n_embd] x2, [n_embd, n_ff]
  MatRef gate_inp;                   // MoE router [n_expert, n_embd], f32
  const float* exp_probs_b = nullptr;  // [n_expert] selection bias, or null
  std::vector<MatRef> gate_exps, up_exps, down_exps;  // [n_expert] x [n_ff_exp, n_embd], x2, [n_embd, n_ff_exp]
  MatRef gate_shexp, up_shexp, down_shexp;            // [n_ff_exp * n_expert_shared, n_embd] x2, transposed down
};

class Model {
 public:
  // Opens and validates a GGUF model: every tensor the architecture needs must exist with the
  // expected shape and a supported type; errors name the tensor or key.
  static Result<std::unique_ptr<Model>> load(const std::string& path);
  static Result<std::unique_ptr<Model>> from_gguf(std::unique_ptr<GgufFile> file);

  Arch arch() const { return arch_; }
  const Hparams& hparams() const { return hp_; }
  const Vocab& vocab() const { return *vocab_; }
  const GgufFile& gguf() const { return *file_; }
  const std::string& name() const { return name_; }

  // The cache geometry this model needs for n_cells cells with the given element types.
  // The only place a cache row size is derived from hyperparameters. llama: a K and a V stream
  // per layer. deepseek2: one MlaLatent stream per layer of type_k (type_v is unused), one row of
  // n_rot + n_lora_kv elements per token: the RoPE'd key part first, then the normalized latent.
  Result<KvLayout> kv_layout(uint32_t n_cells, DType type_k, DType type_v) const;

  // Identity for state files: hashes of hyperparameters, tokenizer, tensor directory and weights.
  // The weights hash reads every tensor once, on first call; later calls return the cached value.
  // Thread-safe.
  const ModelFingerprint& fingerprint() const;

  // Weight bytes read per decoded token (all matrices once + one embedding row).
  uint64_t weight_bytes_per_token() const;
  uint64_t n_params() const;
  uint64_t weight_bytes() const;

  // llama and deepseek2
  const MatRef& tok_embd() const { return tok_embd_; }
  const MatRef& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  // llama
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  // deepseek2
  const std::vector<Deepseek2Layer>& ds2_layers() const { return ds2_layers_; }
  // Bytes of the matrices derived at load time (transposed k_b / k_dec), 0 when the file has them.
  uint64_t derived_weight_bytes() const { return derived_bytes_; }

 private:
  Model() = default;
  Status load_llama();
  Status load_deepseek2();
  Result<KvLayout> kv_layout_llama(uint32_t n_cells, DType type_k, DType type_v) const;
  Result<KvLayout> kv_layout_deepseek2(uint32_t n_cells, DType type_k) const;
  // Copies every Q8_0/Q4_0 matrix read only through matmul (not the token embeddings, read by row,
  // nor an output matrix tied to them) with a row count that is a multiple of 8 into Interleaved8
  // order, repoints its MatRef and releases the mapped pages. Runs after the architecture loader.
  void repack_weights();

  std::unique_ptr<GgufFile> file_;
  Arch arch_ = Arch::Llama;
  std::string name_;
  Hparams hp_;
  std::optional<Vocab> vocab_;
  MatRef tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<LlamaLayer> layers_;
  std::vector<Deepseek2Layer> ds2_layers_;
  std::vector<std::unique_ptr<uint8_t[]>> owned_;  // derived matrices; Deepseek2Layer views point here
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, FreeDeleter> repacked_;  // Interleaved8 copies (repack_weights); MatRefs point here
  uint64_t derived_bytes_ = 0;
  mutable std::once_flag fp_once_;
  mutable ModelFingerprint fp_;
};

}  // namespace kvstash
