#include "engine/context.h"

#include <algorithm>
#include <limits>

namespace kvstash {

Context::Context(const Model& m, const ContextParams& p, KvLayout layout)
    : model_(m), params_(p), kernels_(active_kernels()), pool_(p.n_threads), cache_(std::make_unique<KvCache>(std::move(layout))) {}

Result<std::unique_ptr<Context>> Context::create(const Model& model, const ContextParams& params_in) {
  ContextParams p = params_in;
  if (p.n_ctx == 0) p.n_ctx = std::min<uint32_t>(model.hparams().n_ctx_train, 4096);
  if (p.n_ctx > (1u << 24)) return invalid_argument("context: n_ctx " + std::to_string(p.n_ctx) + " exceeds the limit 16777216");
  if (p.n_batch < 1 || p.n_ubatch < 1) return invalid_argument("context: batch sizes must be >= 1");
  if (p.n_ubatch > p.n_batch) p.n_ubatch = p.n_batch;
  if (p.n_threads <= 0) p.n_threads = ThreadPool::default_threads();
  if (p.n_threads > 1024) return invalid_argument("context: " + std::to_string(p.n_threads) + " threads is too many");
  KV_ASSIGN_OR_RETURN(KvLayout layout, model.kv_layout(p.n_ctx, p.type_k, p.type_v));
  std::unique_ptr<Context> c(new Context(model, p, std::move(layout)));
  forward_scratch_init(model, p.n_ubatch, p.n_ctx, p.n_threads, &c->scratch_, p.mla_path);
  c->cells_.resize(p.n_batch);
  c->logits_.resize(size_t(model.hparams().n_vocab));
  return c;
}

Status Context::validate(const Batch& b) const {
  const int32_t n = b.size();
  if (n == 0) return invalid_argument("decode: empty batch");
  if (n > params_.n_batch) return invalid_argument("decode: batch of " + std::to_string(n) + " tokens exceeds n_batch " + std::to_string(params_.n_batch));
  if (b.pos.size() != size_t(n) || b.seq.size() != size_t(n) || b.logits.size() != size_t(n))
    return invalid_argument("decode: batch arrays differ in length");
  const int32_t n_vocab = static_cast<int32_t>(model_.hparams().n_vocab);
  for (int32_t i = 0; i < n; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= n_vocab)
      return invalid_argument("decode: token " + std::to_string(i) + " has id " + std::to_string(b.tokens[i]) + ", expected 0.." + std::to_string(n_vocab - 1));
    if (!valid_seq_id(b.seq[i])) return invalid_argument("decode: token " + std::to_string(i) + " has sequence id " + std::to_string(b.seq[i]));
    if (b.pos[i] < 0) return invalid_argument("decode: token " + std::to_string(i) + " has negative position " + std::to_string(b.pos[i]));
    if (cache_->find_cell(b.seq[i], b.pos[i]) >= 0)
      return invalid_argument("decode: sequence " + std::to_string(b.seq[i]) + " already holds position " + std::to_string(b.pos[i]));
  }
  // Duplicate (seq, pos) pairs inside the batch.
  for (int32_t i = 0; i < n; ++i)
    for (int32_t j = i + 1; j < n; ++j)
      if (b.seq[i] == b.seq[j] && b.pos[i] == b.pos[j])
        return invalid_argument("decode: batch holds position " + std::to_string(b.pos[i]) + " of sequence " + std::to_string(b.seq[i]) + " twice");
  if (uint32_t(n) > cache_->n_cells() - cache_->n_used())
    return resource_exhausted("decode: batch needs " + std::to_string(n) + " cache cells, " +
                              std::to_string(cache_->n_cells() - cache_->n_used()) + " of " + std::to_string(cache_->n_cells()) + " are free");
  return Status::ok();
}

Status Context::decode(const Batch& b) {
  KV_RETURN_IF_ERROR(validate(b));
  const int32_t n = b.size();
  int32_t n_out = 0;
  for (int32_t i = 0; i < n; ++i) n_out += b.logits[i] != 0;
  const size_t need = size_t(std::max(n_out, 1)) * model_.hparams().n_vocab;
  if (logits_.size() < need) logits_.resize(need);  // grows only when more outputs are asked for
  KV_RETURN_IF_ERROR(cache_->find_free(uint32_t(n), cells_.data()));
  for (int32_t i = 0; i < n; ++i) cache_->cell_assign(cells_[i], b.pos[i], b.seq[i], b.tokens[i]);

  int32_t out_base = 0;
  for (int32_t i0 = 0; i0 < n; i0 += params_.n_ubatch) {
    const int32_t m = std::min(params_.n_ubatch, n - i0);
    UBatch ub{b.tokens.data() + i0, b.pos.data() + i0, b.seq.data() + i0, b.logits.data() + i0, cells_.data() + i0, m};
    forward(model_, *cache_, pool_, kernels_, scratch_, ub, logits_.data() + size_t(out_base) * model_.hparams().n_vocab);
    for (int32_t i = 0; i < m; ++i) out_base += ub.want_logits[i] != 0;
  }
  n_outputs_ = n_out;
  return Status::ok();
}

Result<const float*> Context::eval(SeqId seq, const int32_t* tokens, int32_t n, int32_t pos0) {
  if (n <= 0) return invalid_argument("eval: no tokens");
  for (int32_t i0 = 0; i0 < n; i0 += params_.n_batch) {
    const int32_t m = std::min(params_.n_batch, n - i0);
    eval_batch_.clear();
    for (int32_t i = 0; i < m; ++i) eval_batch_.add(tokens[i0 + i], pos0 + i0 + i, seq, i0 + i == n - 1);
    KV_RETURN_IF_ERROR(decode(eval_batch_));
  }
  return logits(0);
}

Status Context::seq_add(SeqId seq, int32_t p0, int32_t p1, int32_t delta) {
  if (!valid_seq_id(seq))
    return invalid_argument("seq_add: sequence id " + std::to_string(seq) + ", expected 0.." + std::to_string(KvCache::kMaxSeqs - 1));
  if (delta > 0 && int64_t(cache_->seq_pos_max(seq)) + delta > std::numeric_limits<int32_t>::max())
    return invalid_argument("seq_add: shifting sequence " + std::to_string(seq) + " by " + std::to_string(delta) +
                            " moves position " + std::to_string(cache_->seq_pos_max(seq)) + " beyond " +
                            std::to_string(std::numeric_limits<int32_t>::max()));
  cache_->seq_add(seq, p0, p1, delta);
  apply_k_shift(model_, *cache_, pool_, kernels_, scratch_);
  return Status::ok();
}

}  // namespace kvstash
