// Architecture `llama`: loading, cache geometry and the forward pass.
// Shapes are [n_tokens, features] with features contiguous (docs/design.md).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/matmul.h"
#include "model/arch_forward.h"
#include "model/layer_ops.h"
#include "model/load_util.h"
#include "model/model.h"

namespace kvstash {

Status Model::load_llama() {
  const GgufFile& f = *file_;
  const std::string a = "llama.";
  KV_ASSIGN_OR_RETURN(hp_.n_embd, load_u32(f, a + "embedding_length", 1, 1u << 20));
  KV_ASSIGN_OR_RETURN(hp_.n_layer, load_u32(f, a + "block_count", 1, 4096));
  KV_ASSIGN_OR_RETURN(hp_.n_head, load_u32(f, a + "attention.head_count", 1, 4096));
  hp_.n_head_kv = hp_.n_head;
  if (f.find(a + "attention.head_count_kv")) {
    KV_ASSIGN_OR_RETURN(hp_.n_head_kv, load_u32(f, a + "attention.head_count_kv", 1, hp_.n_head));
  }
  if (hp_.n_head % hp_.n_head_kv != 0)
    return invalid_argument("model: head_count " + std::to_string(hp_.n_head) + " is not a multiple of head_count_kv " + std::to_string(hp_.n_head_kv));
  KV_ASSIGN_OR_RETURN(hp_.n_ff, load_u32(f, a + "feed_forward_length", 1, 1u << 24));
  hp_.head_dim = hp_.n_embd / hp_.n_head;
  if (f.find(a + "attention.key_length")) {
    KV_ASSIGN_OR_RETURN(hp_.head_dim, load_u32(f, a + "attention.key_length", 1, 1u << 16));
  }
  if (hp_.head_dim == 0 || hp_.head_dim % 2 != 0) return invalid_argument("model: head dimension " + std::to_string(hp_.head_dim) + " must be even and > 0");
  hp_.n_rot = hp_.head_dim;
  if (f.find(a + "rope.dimension_count")) {
    KV_ASSIGN_OR_RETURN(hp_.n_rot, load_u32(f, a + "rope.dimension_count", 2, hp_.head_dim));
  }
  if (hp_.n_rot % 2 != 0) return invalid_argument("model: key 'llama.rope.dimension_count' must be even");
  hp_.n_ctx_train = 2048;
  if (f.find(a + "context_length")) {
    KV_ASSIGN_OR_RETURN(hp_.n_ctx_train, load_u32(f, a + "context_length", 1, 1u << 30));
  }
  if (f.find(a + "rope.freq_base")) {
    KV_ASSIGN_OR_RETURN(double fb, f.get_f64(a + "rope.freq_base"));
    if (!(fb > 0.0)) return invalid_argument("model: key 'llama.rope.freq_base' must be > 0");
    hp_.rope_freq_base = static_cast<float>(fb);
  }
  if (f.find(a + "attention.layer_norm_rms_epsilon")) {
    KV_ASSIGN_OR_RETURN(double eps, f.get_f64(a + "attention.layer_norm_rms_epsilon"));
    if (!(eps > 0.0 && eps < 1.0)) return invalid_argument("model: key 'llama.attention.layer_norm_rms_epsilon' out of range");
    hp_.rms_eps = static_cast<float>(eps);
  }
  hp_.n_vocab = static_cast<uint32_t>(vocab_->n_tokens());

  const uint32_t n_q = hp_.n_head * hp_.head_dim, n_kv = hp_.n_head_kv * hp_.head_dim;
  KV_ASSIGN_OR_RETURN(tok_embd_, load_mat(f, "token_embd.weight", hp_.n_embd, hp_.n_vocab));
  KV_ASSIGN_OR_RETURN(output_norm_, load_vec(f, "output_norm.weight", hp_.n_embd));
  if (f.find_tensor("output.weight")) {
    KV_ASSIGN_OR_RETURN(output_, load_mat(f, "output.weight", hp_.n_embd, hp_.n_vocab));
  } else {
    output_ = tok_embd_;  // tied embeddings
  }
  layers_.resize(hp_.n_layer);
  for (uint32_t il = 0; il < hp_.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LlamaLayer& L = layers_[il];
    KV_ASSIGN_OR_RETURN(L.attn_norm, load_vec(f, p + "attn_norm.weight", hp_.n_embd));
    KV_ASSIGN_OR_RETURN(L.ffn_norm, load_vec(f, p + "ffn_norm.weight", hp_.n_embd));
    KV_ASSIGN_OR_RETURN(L.wq, load_mat(f, p + "attn_q.weight", hp_.n_embd, n_q));
    KV_ASSIGN_OR_RETURN(L.wk, load_mat(f, p + "attn_k.weight", hp_.n_embd, n_kv));
    KV_ASSIGN_OR_RETURN(L.wv, load_mat(f, p + "attn_v.weight", hp_.n_embd, n_kv));
    KV_ASSIGN_OR_RETURN(L.wo, load_mat(f, p + "attn_output.weight", n_q, hp_.n_embd));
    KV_ASSIGN_OR_RETURN(L.w_gate, load_mat(f, p + "ffn_gate.weight", hp_.n_embd, hp_.n_ff));
    KV_ASSIGN_OR_RETURN(L.w_up, load_mat(f, p + "ffn_up.weight", hp_.n_embd, hp_.n_ff));
    KV_ASSIGN_OR_RETURN(L.w_down, load_mat(f, p + "ffn_down.weight", hp_.n_ff, hp_.n_embd));
    if (act_type_for(L.wq.type) != act_type_for(L.wk.type) || act_type_for(L.wq.type) != act_type_for(L.wv.type))
      return unsupported("model: layer " + std::to_string(il) + ": attn_q/attn_k/attn_v types must share an activation format");
    if (act_type_for(L.w_gate.type) != act_type_for(L.w_up.type))
      return unsupported("model: layer " + std::to_string(il) + ": ffn_gate/ffn_up types must share an activation format");
  }
  return Status::ok();
}

Result<KvLayout> Model::kv_layout_llama(uint32_t n_cells, DType type_k, DType type_v) const {
  // Every cache type the attention path reads: float rows (dot_row / axpy_row), block-quantized
  // rows (q8_0, q4_0: one head row = head_dim / 32 blocks) and q8_KV (one scale per head row).
  for (auto [t, name] : {std::pair{type_k, "K"}, std::pair{type_v, "V"}}) {
    const DTypeTraits& tr = dtype_traits(t);
    if (hp_.head_dim % tr.block_elems != 0)
      return invalid_argument(std::string("kv: ") + name + " cache type " + tr.name + " cannot store this model's heads: head dim " +
                              std::to_string(hp_.head_dim) + " is not a multiple of the " + tr.name + " block size " + std::to_string(tr.block_elems));
  }
  std::vector<std::vector<KvLayout::StreamRequest>> layers(hp_.n_layer);
  for (auto& l : layers) {
    l.push_back({KvStream::K, type_k, hp_.n_head_kv * hp_.head_dim, hp_.n_head_kv});
    l.push_back({KvStream::V, type_v, hp_.n_head_kv * hp_.head_dim, hp_.n_head_kv});
  }
  KvLayout out;
  std::string err = KvLayout::make(n_cells, layers, &out);
  if (!err.empty()) return invalid_argument("kv: " + err);
  return out;
}

// ------------------------------------------------------------------ forward pass

namespace {


// cos/sin of each rotated pair for position pos: cs[2i], cs[2i+1]; theta_i = pos * base^(-2i/n_rot),
// built by repeated multiplication like ggml so results track the reference implementation.
void rope_table(int32_t pos, int32_t n_rot, float base, float* cs) {
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(n_rot));
  float theta = static_cast<float>(pos);
  for (int32_t i = 0; i < n_rot / 2; ++i) {
    cs[2 * i] = std::cos(theta);
    cs[2 * i + 1] = std::sin(theta);
    theta *= theta_scale;
  }
}

// Normal (non-NeoX) RoPE: rotates adjacent pairs (x[2i], x[2i+1]) of the first n_rot dims of each head.
void rope_apply(float* x, int32_t n_heads, int32_t head_dim, int32_t n_rot, const float* cs) {
  for (int32_t h = 0; h < n_heads; ++h) {
    float* xh = x + h * head_dim;
    for (int32_t i = 0; i < n_rot / 2; ++i) {
      const float c = cs[2 * i], s = cs[2 * i + 1];
      const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
      xh[2 * i] = x0 * c - x1 * s;
      xh[2 * i + 1] = x0 * s + x1 * c;
    }
  }
}

using layer_ops::rms_norm;
using layer_ops::silu;

}  // namespace

void forward_scratch_init_llama(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s) {
  const Hparams& hp = model.hparams();
  const size_t n_q = size_t(hp.n_head) * hp.head_dim, n_kv = size_t(hp.n_head_kv) * hp.head_dim;
  s->n_ub = n_ub;
  s->x.assign(size_t(n_ub) * hp.n_embd, 0.0f);
  s->xn.assign(size_t(n_ub) * hp.n_embd, 0.0f);
  s->out.assign(size_t(n_ub) * std::max<size_t>(hp.n_embd, n_q), 0.0f);
  s->q.assign(size_t(n_ub) * n_q, 0.0f);
  s->k.assign(size_t(n_ub) * n_kv, 0.0f);
  s->v.assign(size_t(n_ub) * n_kv, 0.0f);
  s->attn.assign(size_t(n_ub) * n_q, 0.0f);
  s->ff_a.assign(size_t(n_ub) * hp.n_ff, 0.0f);
  s->ff_b.assign(size_t(n_ub) * hp.n_ff, 0.0f);
  const size_t max_cols = std::max<size_t>({hp.n_embd, n_q, hp.n_ff});
  const size_t max_cols_q8 = (max_cols + kQK8_0 - 1) / kQK8_0 * kQK8_0;
  s->acts.assign(size_t(n_ub) * dtype_row_bytes(DType::Q8_0, max_cols_q8), 0);
  s->rope_cs.assign(size_t(n_ub) * hp.n_rot, 0.0f);
  const size_t nth = size_t(std::max(1, n_threads));
  attn_scratch_init(n_ub, n_threads, int32_t(hp.n_head), int32_t(hp.n_head_kv), int32_t(hp.head_dim), int32_t(hp.head_dim), s);
  s->kshift.assign(nth * (size_t(hp.head_dim) + hp.n_rot), 0.0f);
  s->shift_cells.reserve(n_cells);
  s->seq_cells.resize(KvCache::kMaxSeqs);
  s->seq_pos.resize(KvCache::kMaxSeqs);
  for (auto& v : s->seq_cells) v.reserve(n_cells);
  for (auto& v : s->seq_pos) v.reserve(n_cells);
  s->out_rows.reserve(n_ub);
}

void forward_llama(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
             const UBatch& ub, float* logits) {
  const Hparams& hp = model.hparams();
  const int32_t n = ub.n;
  const int32_t n_embd = hp.n_embd, hd = hp.head_dim, n_head = hp.n_head, n_head_kv = hp.n_head_kv;
  const int32_t n_q = n_head * hd, n_kv = n_head_kv * hd, n_ff = hp.n_ff;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // Embeddings.
  const MatRef& emb = model.tok_embd();
  for (int32_t i = 0; i < n; ++i)
    dequantize_row_ref(emb.type, emb.data + size_t(ub.tokens[i]) * emb.row_bytes, s.x.data() + size_t(i) * n_embd, n_embd);
  for (int32_t i = 0; i < n; ++i) rope_table(ub.pos[i], hp.n_rot, hp.rope_freq_base, s.rope_cs.data() + size_t(i) * hp.n_rot);

  // Cells visible to each sequence of this micro-batch, sorted by position (the engine has
  // already assigned this batch's cells). Attention always reads them in position order, so a
  // token's result does not depend on where its sequence's cells sit in the cache.
  uint64_t seq_mask = 0;
  for (int32_t i = 0; i < n; ++i) seq_mask |= uint64_t(1) << ub.seq[i];
  for (SeqId sq = 0; sq < KvCache::kMaxSeqs; ++sq) {
    if (!((seq_mask >> sq) & 1)) continue;
    cache.seq_cells_sorted(sq, &s.seq_cells[sq]);
    s.seq_pos[sq].clear();
    for (uint32_t c : s.seq_cells[sq]) s.seq_pos[sq].push_back(cache.cell_pos(c));
  }
  attn_plan(ub, n_head, n_head_kv, pool.n_threads(), s);

  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    const LlamaLayer& L = model.layers()[il];
    // ---- attention ----
    for (int32_t i = 0; i < n; ++i)
      rms_norm(s.x.data() + size_t(i) * n_embd, L.attn_norm, s.xn.data() + size_t(i) * n_embd, n_embd, hp.rms_eps);
    Acts a = prepare_acts(pool, k, act_type_for(L.wq.type), s.xn.data(), n, n_embd, s.acts.data());
    matmul(pool, k, a, {{&L.wq, s.q.data(), n_q}, {&L.wk, s.k.data(), n_kv}, {&L.wv, s.v.data(), n_kv}});

    const KvRowSpec& ks = cache.layout().layer(il).streams[0];
    const KvRowSpec& vs = cache.layout().layer(il).streams[1];
    for (int32_t i = 0; i < n; ++i) {
      const float* cs = s.rope_cs.data() + size_t(i) * hp.n_rot;
      rope_apply(s.q.data() + size_t(i) * n_q, n_head, hd, hp.n_rot, cs);
      rope_apply(s.k.data() + size_t(i) * n_kv, n_head_kv, hd, hp.n_rot, cs);
      // One head row at a time: a q8_KV row holds one head, with its own scale.
      uint8_t* krow = cache.row(il, 0, ub.cells[i]);
      uint8_t* vrow = cache.row(il, 1, ub.cells[i]);
      for (int32_t g = 0; g < n_head_kv; ++g) {
        k.store_row(ks.dtype, s.k.data() + size_t(i) * n_kv + size_t(g) * hd, krow + g * ks.group_bytes, hd);
        k.store_row(vs.dtype, s.v.data() + size_t(i) * n_kv + size_t(g) * hd, vrow + g * vs.group_bytes, hd);
      }
    }

    // A stream's rows lie back to back in the cache: row(il, si, c) = row(il, si, 0) + c * row_bytes.
    AttnGroup ag;
    ag.k_type = ks.dtype;
    ag.v_type = vs.dtype;
    ag.head_dim = hd;
    ag.v_row_elems = hd;
    ag.v_dim = hd;
    ag.scale = scale;
    ag.k = cache.row(il, 0, 0);
    ag.k_cell_bytes = ks.row_bytes;
    ag.v = cache.row(il, 1, 0);
    ag.v_cell_bytes = vs.row_bytes;
    ag.q = s.q.data();
    ag.q_tok_stride = size_t(n_q);
    ag.out = s.attn.data();
    ag.out_tok_stride = size_t(n_q);
    attn_run(pool, k, s, ub, ag, ks.group_bytes, vs.group_bytes, int64_t(n) * n_head * hd * int64_t(s.seq_cells[ub.seq[0]].size()));

    a = prepare_acts(pool, k, act_type_for(L.wo.type), s.attn.data(), n, n_q, s.acts.data());
    matmul(pool, k, a, {{&L.wo, s.out.data(), n_embd}});
    for (size_t j = 0; j < size_t(n) * n_embd; ++j) s.x[j] += s.out[j];

    // ---- feed-forward (SwiGLU) ----
    for (int32_t i = 0; i < n; ++i)
      rms_norm(s.x.data() + size_t(i) * n_embd, L.ffn_norm, s.xn.data() + size_t(i) * n_embd, n_embd, hp.rms_eps);
    a = prepare_acts(pool, k, act_type_for(L.w_gate.type), s.xn.data(), n, n_embd, s.acts.data());
    matmul(pool, k, a, {{&L.w_gate, s.ff_a.data(), n_ff}, {&L.w_up, s.ff_b.data(), n_ff}});
    for (size_t j = 0; j < size_t(n) * n_ff; ++j) s.ff_a[j] = silu(s.ff_a[j]) * s.ff_b[j];
    a = prepare_acts(pool, k, act_type_for(L.w_down.type), s.ff_a.data(), n, n_ff, s.acts.data());
    matmul(pool, k, a, {{&L.w_down, s.out.data(), n_embd}});
    for (size_t j = 0; j < size_t(n) * n_embd; ++j) s.x[j] += s.out[j];
  }

  // ---- output: only the rows that want logits ----
  s.out_rows.clear();
  for (int32_t i = 0; i < n; ++i)
    if (ub.want_logits[i]) s.out_rows.push_back(i);
  const int32_t n_out = static_cast<int32_t>(s.out_rows.size());
  if (n_out == 0) return;
  for (int32_t r = 0; r < n_out; ++r)
    rms_norm(s.x.data() + size_t(s.out_rows[r]) * n_embd, model.output_norm(), s.xn.data() + size_t(r) * n_embd, n_embd, hp.rms_eps);
  const MatRef& out = model.output();
  Acts a = prepare_acts(pool, k, act_type_for(out.type), s.xn.data(), n_out, n_embd, s.acts.data());
  matmul(pool, k, a, {{&out, logits, static_cast<int64_t>(hp.n_vocab)}});
}

// ------------------------------------------------------------------ K-shift

void apply_k_shift_llama(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s) {
  if (!cache.has_shift()) return;
  const Hparams& hp = model.hparams();
  const int32_t hd = hp.head_dim, n_rot = hp.n_rot, n_head_kv = hp.n_head_kv;
  s.shift_cells.clear();
  for (uint32_t c = 0; c < cache.n_cells(); ++c)
    if (!cache.cell_empty(c) && cache.cell_shift(c) != 0) s.shift_cells.push_back(c);
  pool.run([&](int ith, int nth) {
    int64_t c0, c1;
    split_range(int64_t(s.shift_cells.size()), ith, nth, 1, &c0, &c1);
    float* row = s.kshift.data() + size_t(ith) * (hd + n_rot);  // [head_dim] then [n_rot] cos/sin
    float* cs = row + hd;
    for (int64_t j = c0; j < c1; ++j) {
      const uint32_t c = s.shift_cells[j];
      rope_table(cache.cell_shift(c), n_rot, hp.rope_freq_base, cs);
      for (uint32_t il = 0; il < hp.n_layer; ++il) {
        const KvRowSpec& ks = cache.layout().layer(il).streams[0];
        uint8_t* krow = cache.row(il, 0, c);
        for (int32_t g = 0; g < n_head_kv; ++g) {
          uint8_t* head = krow + g * ks.group_bytes;
          dequantize_row_ref(ks.dtype, head, row, hd);
          rope_apply(row, 1, hd, n_rot, cs);
          k.store_row(ks.dtype, row, head, hd);
        }
      }
    }
  });
  cache.shift_clear();
}

}  // namespace kvstash
