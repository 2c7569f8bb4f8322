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
};

// Names of built-in presets, and the spec of one ("tiny-llama", "tinyllama-1.1b").
std::vector<std::string> model_gen_presets();
Result<ModelGenSpec> model_gen_preset(const std::string& name);

// Writes the model to `path` (via a temporary file and rename).
Status model_gen_write(const ModelGenSpec& spec, const std::string& path);

}  // namespace kvstash
