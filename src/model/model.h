// Model: a loaded GGUF model: hyperparameters, tokenizer and weight views into the mapping.
// Owns: the GgufFile (mmap) and the Vocab. Weights are never copied or dequantized whole.
// Architectures live in arch_<name>.cpp and register in model_registry.cpp.
// Thread-safe after load (read-only).
#pragma once

#include <cstdint>
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

enum class Arch { Llama };
const char* arch_name(Arch a);

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
};

struct LlamaLayer {
  const float* attn_norm = nullptr;  // [n_embd]
  const float* ffn_norm = nullptr;   // [n_embd]
  MatRef wq, wk, wv, wo;             // [n_head*head_dim, n_embd], [n_head_kv*head_dim, n_embd] x2, [n_embd, n_head*head_dim]
  MatRef w_gate, w_up, w_down;       // [n_ff, n_embd] x2, [n_embd, n_ff]
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
  // The only place a cache row size is derived from hyperparameters.
  Result<KvLayout> kv_layout(uint32_t n_cells, DType type_k, DType type_v) const;

  // Identity for state files: hashes of hyperparameters, tokenizer, tensor directory and weights.
  // The weights hash reads every tensor once, on first call; later calls return the cached value.
  // Thread-safe.
  const ModelFingerprint& fingerprint() const;

  // Weight bytes read per decoded token (all matrices once + one embedding row).
  uint64_t weight_bytes_per_token() const;
  uint64_t n_params() const;
  uint64_t weight_bytes() const;

  // llama
  const MatRef& tok_embd() const { return tok_embd_; }
  const MatRef& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const std::vector<LlamaLayer>& layers() const { return layers_; }

 private:
  Model() = default;
  Status load_llama();

  std::unique_ptr<GgufFile> file_;
  Arch arch_ = Arch::Llama;
  std::string name_;
  Hparams hp_;
  std::optional<Vocab> vocab_;
  MatRef tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<LlamaLayer> layers_;
  mutable std::once_flag fp_once_;
  mutable ModelFingerprint fp_;
};

}  // namespace kvstash
