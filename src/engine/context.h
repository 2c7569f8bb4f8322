// Context: a model bound to a KV cache, scratch buffers and a thread pool; runs batches.
// Owns: the cache, the scratch, the pool and the logits of the last decode.
// Validates every batch before it touches the cache: a refused batch changes nothing.
// Not thread-safe: one caller at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/kernels.h"
#include "core/threadpool.h"
#include "kv/kv_cache.h"
#include "model/forward.h"
#include "model/model.h"

namespace kvstash {

struct ContextParams {
  uint32_t n_ctx = 0;        // cache cells; 0 = min(training context, 4096)
  int32_t n_batch = 2048;    // max tokens per decode() call (logical batch)
  int32_t n_ubatch = 512;    // max tokens per forward pass (physical batch)
  int n_threads = 0;         // 0 = all CPUs
  DType type_k = DType::F16;  // K cache; for MLA models (deepseek2) the latent cache
  DType type_v = DType::F16;  // V cache; unused by MLA models, whose one latent stream is type_k
  MlaPath mla_path = MlaPath::Absorbed;  // MLA models only: how attention reads the latent cache
};

// Tokens to evaluate. Token i of sequence seq[i] sits at position pos[i].
struct Batch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> pos;
  std::vector<SeqId> seq;
  std::vector<uint8_t> logits;  // 1 = return this token's logits

  void clear() { tokens.clear(); pos.clear(); seq.clear(); logits.clear(); }
  void add(int32_t token, int32_t p, SeqId s, bool want_logits) {
    tokens.push_back(token);
    pos.push_back(p);
    seq.push_back(s);
    logits.push_back(want_logits ? 1 : 0);
  }
  int32_t size() const { return static_cast<int32_t>(tokens.size()); }
};

class Context {
 public:
  static Result<std::unique_ptr<Context>> create(const Model& model, const ContextParams& params);

  const Model& model() const { return model_; }
  const ContextParams& params() const { return params_; }
  KvCache& cache() { return *cache_; }
  const KvCache& cache() const { return *cache_; }
  ThreadPool& pool() { return pool_; }
  const KernelSet& kernels() const { return kernels_; }

  // Evaluates the batch, split into micro-batches of n_ubatch. On error nothing was changed.
  Status decode(const Batch& batch);
  // Logits of the i-th token that asked for them in the last decode(): [n_vocab].
  const float* logits(int32_t i) const { return logits_.data() + size_t(i) * model_.hparams().n_vocab; }
  int32_t n_outputs() const { return n_outputs_; }

  // Convenience for one sequence: evaluates tokens at positions pos0.., returns the last
  // token's logits (valid until the next decode).
  Result<const float*> eval(SeqId seq, const int32_t* tokens, int32_t n, int32_t pos0);

  // Moves seq's cells with p0 <= pos < p1 (p0 < 0: 0, p1 < 0: +inf) by delta positions and
  // rotates their K rows to match at once (KvCache::seq_add, then apply_k_shift), so the next
  // decode sees a consistent cache. Cells moved below position 0 are freed; a cell shared with
  // other sequences moves for all of them (llama.cpp's rule). InvalidArgument, with nothing
  // changed, for a bad sequence id or a new position beyond INT32_MAX.
  Status seq_add(SeqId seq, int32_t p0, int32_t p1, int32_t delta);

 private:
  Context(const Model& m, const ContextParams& p, KvLayout layout);
  Status validate(const Batch& b) const;

  const Model& model_;
  ContextParams params_;
  const KernelSet& kernels_;
  ThreadPool pool_;
  std::unique_ptr<KvCache> cache_;
  ForwardScratch scratch_;
  std::vector<float> logits_;
  std::vector<uint32_t> cells_;
  Batch eval_batch_;
  int32_t n_outputs_ = 0;
};

}  // namespace kvstash
