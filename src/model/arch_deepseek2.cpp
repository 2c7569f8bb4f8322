// Architecture `deepseek2` (DeepSeek-V2/V2.5/V3-style): loading and validation, the latent cache
// layout, scratch sizing, the layer loop and the K-shift. MLA attention is in
// deepseek2_attention.cpp, the MoE feed-forward in moe.cpp.
// GGUF keys and tensor names are llama.cpp's (src/models/deepseek2.cpp); shapes below are written
// as GGUF ne (innermost first), as in llama.cpp's create_tensor calls.
// Shapes of buffers are [n_tokens, features] with features contiguous (docs/design.md).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/matmul.h"
#include "model/arch_forward.h"
#include "model/deepseek2_ops.h"
#include "model/load_util.h"
#include "model/model.h"

namespace kvstash {
namespace {

// Transposes per-head matrices src[h] ([R, C], any weight type) into one owned buffer of [C, R]
// matrices. F16 and BF16 keep their type (transposition is exact); every other type becomes F32,
// which holds dequantized values exactly (requantizing would round them a second time).
std::vector<MatRef> transpose_heads(const std::vector<MatRef>& src, std::unique_ptr<uint8_t[]>* owned, uint64_t* n_bytes) {
  const DType dt = (src[0].type == DType::F16 || src[0].type == DType::BF16) ? src[0].type : DType::F32;
  const int64_t R = src[0].n_rows, C = src[0].n_cols;
  const size_t rb = dtype_row_bytes(dt, static_cast<uint64_t>(R));
  const size_t per_head = rb * static_cast<size_t>(C);
  *n_bytes = per_head * src.size();
  owned->reset(new uint8_t[*n_bytes]);
  std::vector<float> in(static_cast<size_t>(C)), t(static_cast<size_t>(R * C));
  std::vector<MatRef> out(src.size());
  for (size_t h = 0; h < src.size(); ++h) {
    for (int64_t r = 0; r < R; ++r) {
      dequantize_row_ref(src[h].type, src[h].data + r * src[h].row_bytes, in.data(), C);
      for (int64_t c = 0; c < C; ++c) t[c * R + r] = in[c];
    }
    uint8_t* dst = owned->get() + h * per_head;
    for (int64_t c = 0; c < C; ++c) quantize_row_ref(dt, t.data() + c * R, dst + c * rb, R);
    out[h] = MatRef{dt, dst, C, R, rb};
  }
  return out;
}

Status same_acts(uint32_t il, const MatRef& a, const char* an, const MatRef& b, const char* bn) {
  if (act_type_for(a.type) == act_type_for(b.type)) return Status::ok();
  return unsupported("model: layer " + std::to_string(il) + ": " + an + " (" + dtype_name(a.type) + ") and " + bn + " (" +
                     dtype_name(b.type) + ") must share an activation format");
}

}  // namespace

Status Model::load_deepseek2() {
  const GgufFile& f = *file_;
  const std::string a = "deepseek2.";
  KV_ASSIGN_OR_RETURN(hp_.n_embd, load_u32(f, a + "embedding_length", 1, 1u << 20));
  KV_ASSIGN_OR_RETURN(hp_.n_layer, load_u32(f, a + "block_count", 1, 4096));
  KV_ASSIGN_OR_RETURN(hp_.n_head, load_u32(f, a + "attention.head_count", 1, 4096));
  KV_ASSIGN_OR_RETURN(hp_.n_head_kv, load_u32_or(f, a + "attention.head_count_kv", 1, hp_.n_head, hp_.n_head));
  KV_ASSIGN_OR_RETURN(hp_.n_ctx_train, load_u32_or(f, a + "context_length", 1, 1u << 30, 4096));
  KV_ASSIGN_OR_RETURN(hp_.rope_freq_base, load_f32_or(f, a + "rope.freq_base", 1e-6, 1e12, 10000.0f));
  if (!f.find(a + "attention.layer_norm_rms_epsilon")) return not_found("model: missing key '" + a + "attention.layer_norm_rms_epsilon'");
  KV_ASSIGN_OR_RETURN(hp_.rms_eps, load_f32_or(f, a + "attention.layer_norm_rms_epsilon", 1e-12, 0.5, 1e-6f));

  // ---- MLA geometry ----
  KV_ASSIGN_OR_RETURN(hp_.n_lora_q, load_u32_or(f, a + "attention.q_lora_rank", 0, 1u << 16, 0));
  KV_ASSIGN_OR_RETURN(hp_.n_lora_kv, load_u32(f, a + "attention.kv_lora_rank", 1, 1u << 16));
  KV_ASSIGN_OR_RETURN(hp_.n_rot, load_u32(f, a + "rope.dimension_count", 2, 1u << 12));
  if (hp_.n_rot % 2 != 0) return invalid_argument("model: key '" + a + "rope.dimension_count' must be even, got " + std::to_string(hp_.n_rot));
  // Converters since llama.cpp's MLA support write the cache view (key_length = kv_lora_rank +
  // rope, value_length = kv_lora_rank) plus the decompressed heads in *_mla keys; older ones
  // write the decompressed heads (192 / 128) in key_length / value_length.
  const bool mla_keys = f.find(a + "attention.key_length_mla") != nullptr;
  const std::string kk = mla_keys ? "attention.key_length_mla" : "attention.key_length";
  const std::string vk = mla_keys ? "attention.value_length_mla" : "attention.value_length";
  KV_ASSIGN_OR_RETURN(hp_.head_dim, load_u32(f, a + kk, hp_.n_rot + 1, 1u << 16));
  KV_ASSIGN_OR_RETURN(hp_.head_dim_v, load_u32(f, a + vk, 1, 1u << 16));

  // ---- FFN: leading dense layers, then MoE ----
  KV_ASSIGN_OR_RETURN(hp_.n_layer_dense_lead, load_u32_or(f, a + "leading_dense_block_count", 0, hp_.n_layer, 0));
  if (hp_.n_layer_dense_lead > 0) {
    KV_ASSIGN_OR_RETURN(hp_.n_ff, load_u32(f, a + "feed_forward_length", 1, 1u << 24));
  }
  if (hp_.n_layer_dense_lead < hp_.n_layer) {
    KV_ASSIGN_OR_RETURN(hp_.n_expert, load_u32(f, a + "expert_count", 1, 1u << 12));
    KV_ASSIGN_OR_RETURN(hp_.n_expert_used, load_u32(f, a + "expert_used_count", 1, hp_.n_expert));
    KV_ASSIGN_OR_RETURN(hp_.n_expert_shared, load_u32(f, a + "expert_shared_count", 0, 1u << 10));
    KV_ASSIGN_OR_RETURN(hp_.n_ff_exp, load_u32(f, a + "expert_feed_forward_length", 1, 1u << 20));
    KV_ASSIGN_OR_RETURN(hp_.expert_weights_scale, load_f32_or(f, a + "expert_weights_scale", 0.0, 1e6, 1.0f));
    if (f.find(a + "expert_weights_norm")) {
      KV_ASSIGN_OR_RETURN(hp_.expert_weights_norm, f.get_bool(a + "expert_weights_norm"));
    }
    // 0 or absent: softmax, as llama.cpp assumes for DeepSeek-V2/V2.5 files written without it.
    KV_ASSIGN_OR_RETURN(uint32_t gating, load_u32_or(f, a + "expert_gating_func", 0, 1u << 10, 0));
    if (gating == 0 || gating == 1) hp_.expert_gating = ExpertGating::Softmax;
    else if (gating == 2) hp_.expert_gating = ExpertGating::Sigmoid;
    else return unsupported("model: key '" + a + "expert_gating_func' is " + std::to_string(gating) + ", supported: 1 (softmax), 2 (sigmoid)");
    KV_ASSIGN_OR_RETURN(hp_.n_expert_groups, load_u32_or(f, a + "expert_group_count", 0, hp_.n_expert, 0));
    if (hp_.n_expert_groups > 1) {
      KV_ASSIGN_OR_RETURN(hp_.n_expert_groups_used, load_u32(f, a + "expert_group_used_count", 1, hp_.n_expert_groups));
      const uint32_t per = hp_.n_expert / hp_.n_expert_groups;
      if (hp_.n_expert % hp_.n_expert_groups != 0 || per < 2 || hp_.n_expert_used > per * hp_.n_expert_groups_used)
        return invalid_argument("model: expert groups: " + std::to_string(hp_.n_expert) + " experts in " + std::to_string(hp_.n_expert_groups) +
                                " groups of >= 2, " + std::to_string(hp_.n_expert_groups_used) + " used, must hold the " +
                                std::to_string(hp_.n_expert_used) + " experts each token uses");
    }
  }

  // ---- RoPE scaling ----
  if (f.find(a + "rope.scaling.type")) {
    KV_ASSIGN_OR_RETURN(std::string st, f.get_string(a + "rope.scaling.type"));
    if (st == "none") hp_.rope_scaling = RopeScaling::None;
    else if (st == "linear") hp_.rope_scaling = RopeScaling::Linear;
    else if (st == "yarn") hp_.rope_scaling = RopeScaling::Yarn;
    else return unsupported("model: key '" + a + "rope.scaling.type' is '" + st + "', supported: none, linear, yarn");
  }
  if (hp_.rope_scaling != RopeScaling::None) {
    KV_ASSIGN_OR_RETURN(float factor, load_f32_or(f, a + "rope.scaling.factor", 1e-3, 1e6, 1.0f));
    hp_.rope_freq_scale = 1.0f / factor;
  }
  if (hp_.rope_scaling == RopeScaling::Yarn) {
    KV_ASSIGN_OR_RETURN(hp_.rope_n_ctx_orig, load_u32_or(f, a + "rope.scaling.original_context_length", 1, 1u << 30, hp_.n_ctx_train));
    KV_ASSIGN_OR_RETURN(hp_.yarn_log_mul, load_f32_or(f, a + "rope.scaling.yarn_log_multiplier", 0.0, 100.0, 0.0f));
    KV_ASSIGN_OR_RETURN(hp_.yarn_beta_fast, load_f32_or(f, a + "rope.scaling.yarn_beta_fast", 1e-3, 1e4, 32.0f));
    KV_ASSIGN_OR_RETURN(hp_.yarn_beta_slow, load_f32_or(f, a + "rope.scaling.yarn_beta_slow", 1e-3, 1e4, 1.0f));
  }
  hp_.n_vocab = static_cast<uint32_t>(vocab_->n_tokens());

  // ---- tensors ----
  const uint64_t n_embd = hp_.n_embd, n_head = hp_.n_head, hd = hp_.head_dim, nope = hp_.head_dim_nope(), hd_v = hp_.head_dim_v;
  const uint64_t n_kv = hp_.n_lora_kv, n_rot = hp_.n_rot;
  KV_ASSIGN_OR_RETURN(tok_embd_, load_mat(f, "token_embd.weight", n_embd, hp_.n_vocab));
  KV_ASSIGN_OR_RETURN(output_norm_, load_vec(f, "output_norm.weight", n_embd));
  if (f.find_tensor("output.weight")) {
    KV_ASSIGN_OR_RETURN(output_, load_mat(f, "output.weight", n_embd, hp_.n_vocab));
  } else {
    output_ = tok_embd_;  // tied embeddings
  }
  ds2_layers_.resize(hp_.n_layer);
  for (uint32_t il = 0; il < hp_.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    Deepseek2Layer& L = ds2_layers_[il];
    KV_ASSIGN_OR_RETURN(L.attn_norm, load_vec(f, p + "attn_norm.weight", n_embd));
    KV_ASSIGN_OR_RETURN(L.ffn_norm, load_vec(f, p + "ffn_norm.weight", n_embd));
    KV_ASSIGN_OR_RETURN(L.kv_a_norm, load_vec(f, p + "attn_kv_a_norm.weight", n_kv));
    if (hp_.n_lora_q > 0) {
      KV_ASSIGN_OR_RETURN(L.q_a_norm, load_vec(f, p + "attn_q_a_norm.weight", hp_.n_lora_q));
      KV_ASSIGN_OR_RETURN(L.wq_a, load_mat(f, p + "attn_q_a.weight", n_embd, hp_.n_lora_q));
      KV_ASSIGN_OR_RETURN(L.wq_b, load_mat(f, p + "attn_q_b.weight", hp_.n_lora_q, n_head * hd));
    } else {
      KV_ASSIGN_OR_RETURN(L.wq, load_mat(f, p + "attn_q.weight", n_embd, n_head * hd));
    }
    KV_ASSIGN_OR_RETURN(L.wkv_a, load_mat(f, p + "attn_kv_a_mqa.weight", n_embd, n_kv + n_rot));
    KV_RETURN_IF_ERROR(same_acts(il, L.wkv_a, "attn_kv_a_mqa", hp_.n_lora_q ? L.wq_a : L.wq, hp_.n_lora_q ? "attn_q_a" : "attn_q"));

    // Decompression: either the split per-head tensors (attn_k_b, attn_v_b) or attn_kv_b, whose
    // rows are, per head, head_dim_nope key rows then head_dim_v value rows. One of the two
    // per-head key matrices is missing either way and is derived here, transposed (owned_).
    const bool split = f.find_tensor(p + "attn_k_b.weight") && f.find_tensor(p + "attn_v_b.weight");
    uint64_t derived = 0;
    std::unique_ptr<uint8_t[]> buf;
    if (split) {
      KV_ASSIGN_OR_RETURN(L.k_b, load_mat_stack(f, p + "attn_k_b.weight", nope, n_kv, n_head));
      KV_ASSIGN_OR_RETURN(L.v_b, load_mat_stack(f, p + "attn_v_b.weight", n_kv, hd_v, n_head));
      L.k_dec = transpose_heads(L.k_b, &buf, &derived);
    } else {
      KV_ASSIGN_OR_RETURN(MatRef kvb, load_mat(f, p + "attn_kv_b.weight", n_kv, n_head * (nope + hd_v)));
      L.k_dec.resize(n_head);
      L.v_b.resize(n_head);
      for (uint64_t h = 0; h < n_head; ++h) {
        const uint8_t* base = kvb.data + h * (nope + hd_v) * kvb.row_bytes;
        L.k_dec[h] = MatRef{kvb.type, base, static_cast<int64_t>(nope), static_cast<int64_t>(n_kv), kvb.row_bytes};
        L.v_b[h] = MatRef{kvb.type, base + nope * kvb.row_bytes, static_cast<int64_t>(hd_v), static_cast<int64_t>(n_kv), kvb.row_bytes};
      }
      L.k_b = transpose_heads(L.k_dec, &buf, &derived);
    }
    owned_.push_back(std::move(buf));
    derived_bytes_ += derived;
    KV_ASSIGN_OR_RETURN(L.wo, load_mat(f, p + "attn_output.weight", n_head * hd_v, n_embd));

    L.moe = il >= hp_.n_layer_dense_lead;
    if (!L.moe) {
      KV_ASSIGN_OR_RETURN(L.w_gate, load_mat(f, p + "ffn_gate.weight", n_embd, hp_.n_ff));
      KV_ASSIGN_OR_RETURN(L.w_up, load_mat(f, p + "ffn_up.weight", n_embd, hp_.n_ff));
      KV_ASSIGN_OR_RETURN(L.w_down, load_mat(f, p + "ffn_down.weight", hp_.n_ff, n_embd));
      KV_RETURN_IF_ERROR(same_acts(il, L.w_gate, "ffn_gate", L.w_up, "ffn_up"));
      continue;
    }
    KV_ASSIGN_OR_RETURN(L.gate_inp, load_mat(f, p + "ffn_gate_inp.weight", n_embd, hp_.n_expert));
    if (f.find_tensor(p + "exp_probs_b.bias")) {
      KV_ASSIGN_OR_RETURN(L.exp_probs_b, load_vec(f, p + "exp_probs_b.bias", hp_.n_expert));
    }
    KV_ASSIGN_OR_RETURN(L.gate_exps, load_mat_stack(f, p + "ffn_gate_exps.weight", n_embd, hp_.n_ff_exp, hp_.n_expert));
    KV_ASSIGN_OR_RETURN(L.up_exps, load_mat_stack(f, p + "ffn_up_exps.weight", n_embd, hp_.n_ff_exp, hp_.n_expert));
    KV_ASSIGN_OR_RETURN(L.down_exps, load_mat_stack(f, p + "ffn_down_exps.weight", hp_.n_ff_exp, n_embd, hp_.n_expert));
    KV_RETURN_IF_ERROR(same_acts(il, L.gate_exps[0], "ffn_gate_exps", L.up_exps[0], "ffn_up_exps"));
    if (hp_.n_expert_shared > 0) {
      const uint64_t n_ff_sh = uint64_t(hp_.n_ff_exp) * hp_.n_expert_shared;
      KV_ASSIGN_OR_RETURN(L.gate_shexp, load_mat(f, p + "ffn_gate_shexp.weight", n_embd, n_ff_sh));
      KV_ASSIGN_OR_RETURN(L.up_shexp, load_mat(f, p + "ffn_up_shexp.weight", n_embd, n_ff_sh));
      KV_ASSIGN_OR_RETURN(L.down_shexp, load_mat(f, p + "ffn_down_shexp.weight", n_ff_sh, n_embd));
      KV_RETURN_IF_ERROR(same_acts(il, L.gate_shexp, "ffn_gate_shexp", L.up_shexp, "ffn_up_shexp"));
    }
  }
  return Status::ok();
}

Result<KvLayout> Model::kv_layout_deepseek2(uint32_t n_cells, DType type_k) const {
  // One latent row per token and layer: [n_rot] RoPE'd key part, then [n_lora_kv] normalized
  // latent (docs/design.md). One group: all heads attend over the same row (MQA in latent space).
  const uint32_t row = hp_.mla_row_elems();
  const DTypeTraits& tr = dtype_traits(type_k);
  if (row % tr.block_elems != 0)
    return invalid_argument(std::string("kv: latent cache type ") + tr.name + " cannot store this model's rows: n_rot + kv_lora_rank = " +
                            std::to_string(row) + " is not a multiple of the " + tr.name + " block size " + std::to_string(tr.block_elems));
  std::vector<std::vector<KvLayout::StreamRequest>> layers(hp_.n_layer);
  for (auto& l : layers) l.push_back({KvStream::MlaLatent, type_k, row, 1, hp_.n_rot});
  KvLayout out;
  std::string err = KvLayout::make(n_cells, layers, &out);
  if (!err.empty()) return invalid_argument("kv: " + err);
  return out;
}

// ------------------------------------------------------------------ forward pass

namespace ds2 {

layer_ops::RopeParams rope_params(const Hparams& hp) {
  layer_ops::RopeParams rp;
  rp.n_rot = static_cast<int32_t>(hp.n_rot);
  rp.freq_base = hp.rope_freq_base;
  rp.freq_scale = hp.rope_freq_scale;
  if (hp.rope_scaling == RopeScaling::Yarn) {
    rp.ext_factor = 1.0f;
    layer_ops::yarn_corr_dims(rp.n_rot, hp.rope_n_ctx_orig, hp.rope_freq_base, hp.yarn_beta_fast, hp.yarn_beta_slow, &rp.corr_lo, &rp.corr_hi);
  }
  return rp;
}

float kq_scale(const Hparams& hp) {
  const float mscale = 1.0f + hp.yarn_log_mul * std::log(1.0f / hp.rope_freq_scale);
  return mscale * mscale / std::sqrt(static_cast<float>(hp.head_dim));
}

}  // namespace ds2

void forward_scratch_init_deepseek2(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s) {
  const Hparams& hp = model.hparams();
  auto r32 = [](size_t n) { return (n + kQK8_0 - 1) / kQK8_0 * kQK8_0; };
  const size_t nub = size_t(n_ub), nth = size_t(std::max(1, n_threads)), n_head = hp.n_head;
  const size_t row = hp.mla_row_elems(), n_kv = hp.n_lora_kv, nope = hp.head_dim_nope();
  const size_t n_q = n_head * hp.head_dim, n_att = n_head * hp.head_dim_v;
  const size_t n_ff_sh = size_t(hp.n_ff_exp) * hp.n_expert_shared, n_ff = std::max<size_t>({hp.n_ff, n_ff_sh, 1});
  const size_t n_used = hp.n_expert_used, n_slots = nub * n_used;
  s->n_ub = n_ub;
  s->x.assign(nub * hp.n_embd, 0.0f);
  s->xn.assign(nub * hp.n_embd, 0.0f);
  s->out.assign(nub * hp.n_embd, 0.0f);
  s->q.assign(nub * n_q, 0.0f);
  s->attn.assign(nub * n_att, 0.0f);
  s->ff_a.assign(nub * n_ff, 0.0f);
  s->ff_b.assign(nub * n_ff, 0.0f);
  s->k.clear();
  s->v.clear();
  const size_t max_cols = std::max<size_t>({hp.n_embd, hp.n_lora_q, n_att, n_ff});
  s->acts.assign(nub * dtype_row_bytes(DType::Q8_0, r32(max_cols)), 0);
  s->rope_cs.assign(nub * hp.n_rot, 0.0f);
  s->scores.assign(nth * n_cells, 0.0f);
  s->kshift.assign(nth * (row + hp.n_rot), 0.0f);
  s->shift_cells.reserve(n_cells);
  s->seq_cells.resize(KvCache::kMaxSeqs);
  s->seq_pos.resize(KvCache::kMaxSeqs);
  for (auto& v : s->seq_cells) v.reserve(n_cells);
  for (auto& v : s->seq_pos) v.reserve(n_cells);
  s->out_rows.reserve(n_ub);

  MlaMoeScratch& m = s->mla;
  m = MlaMoeScratch{};
  m.q_a.assign(nub * hp.n_lora_q, 0.0f);
  m.kv_a.assign(nub * row, 0.0f);
  m.lat_row.assign(row, 0.0f);
  m.acts2.assign(nub * n_head * dtype_row_bytes(DType::Q8_0, r32(std::max(n_kv, nope))), 0);
  if (s->mla_path == MlaPath::Absorbed) {
    m.q_lat.assign(nub * n_head * row, 0.0f);
    m.o_lat.assign(nub * n_head * n_kv, 0.0f);
    // Tiled attention over the latent rows: one KV head, every query head in its group.
    attn_scratch_init(n_ub, n_threads, int32_t(n_head), 1, int32_t(row), int32_t(row), s);
  } else {
    m.lat_rows.assign(size_t(n_cells) * row, 0.0f);
    m.lat_acts.assign(size_t(n_cells) * dtype_row_bytes(DType::Q8_0, r32(n_kv)), 0);
    m.k_dec.assign(size_t(n_cells) * n_head * nope, 0.0f);
    m.v_dec.assign(size_t(n_cells) * n_att, 0.0f);
    m.seq_toks.reserve(nub);
  }
  if (hp.n_expert > 0) {
    m.router.assign(nub * hp.n_expert, 0.0f);
    m.route_tmp.assign(2 * size_t(hp.n_expert) + hp.n_expert_groups, 0.0f);
    m.route_idx.assign(hp.n_expert, 0);
    m.sel.assign(n_slots, 0);
    m.sel_w.assign(n_slots, 0.0f);
    m.slot.assign(n_slots, 0);
    m.slot_tok.assign(n_slots, 0);
    m.exp_off.assign(size_t(hp.n_expert) + 1, 0);
    m.moe_x.assign(n_slots * std::max(hp.n_embd * sizeof(float), dtype_row_bytes(DType::Q8_0, r32(hp.n_embd))), 0);
    m.moe_g.assign(n_slots * hp.n_ff_exp, 0.0f);
    m.moe_u.assign(n_slots * hp.n_ff_exp, 0.0f);
    m.moe_h.assign(n_slots * dtype_row_bytes(DType::Q8_0, r32(hp.n_ff_exp)), 0);
    m.moe_y.assign(n_slots * hp.n_embd, 0.0f);
    m.shared.assign(nub * hp.n_embd, 0.0f);
  }
  m.tasks.reserve(std::max<size_t>({2 * n_head, 2 * size_t(hp.n_expert), 1}));
}

void forward_deepseek2(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                       const UBatch& ub, float* logits) {
  using layer_ops::rms_norm;
  const Hparams& hp = model.hparams();
  const int32_t n = ub.n, n_embd = hp.n_embd, n_att = hp.n_head * hp.head_dim_v, n_ff = hp.n_ff;

  const MatRef& emb = model.tok_embd();
  for (int32_t i = 0; i < n; ++i)
    dequantize_row_ref(emb.type, emb.data + size_t(ub.tokens[i]) * emb.row_bytes, s.x.data() + size_t(i) * n_embd, n_embd);
  const layer_ops::RopeParams rp = ds2::rope_params(hp);
  for (int32_t i = 0; i < n; ++i) layer_ops::rope_table(ub.pos[i], rp, s.rope_cs.data() + size_t(i) * hp.n_rot);

  // Cells visible to each sequence of this micro-batch, sorted by position (as llama): a token's
  // result does not depend on where its sequence's cells sit in the cache.
  uint64_t seq_mask = 0;
  for (int32_t i = 0; i < n; ++i) seq_mask |= uint64_t(1) << ub.seq[i];
  for (SeqId sq = 0; sq < KvCache::kMaxSeqs; ++sq) {
    if (!((seq_mask >> sq) & 1)) continue;
    cache.seq_cells_sorted(sq, &s.seq_cells[sq]);
    s.seq_pos[sq].clear();
    for (uint32_t c : s.seq_cells[sq]) s.seq_pos[sq].push_back(cache.cell_pos(c));
  }
  if (s.mla_path == MlaPath::Absorbed) attn_plan(ub, int32_t(hp.n_head), 1, pool.n_threads(), s);

  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    const Deepseek2Layer& L = model.ds2_layers()[il];
    // ---- attention ----
    for (int32_t i = 0; i < n; ++i)
      rms_norm(s.x.data() + size_t(i) * n_embd, L.attn_norm, s.xn.data() + size_t(i) * n_embd, n_embd, hp.rms_eps);
    ds2::mla_attention(model, il, cache, pool, k, s, ub);
    Acts a = prepare_acts(pool, k, act_type_for(L.wo.type), s.attn.data(), n, n_att, s.acts.data());
    matmul(pool, k, a, {{&L.wo, s.out.data(), n_embd}});
    for (size_t j = 0; j < size_t(n) * n_embd; ++j) s.x[j] += s.out[j];

    // ---- feed-forward ----
    for (int32_t i = 0; i < n; ++i)
      rms_norm(s.x.data() + size_t(i) * n_embd, L.ffn_norm, s.xn.data() + size_t(i) * n_embd, n_embd, hp.rms_eps);
    if (L.moe) {
      ds2::moe_ffn(hp, L, pool, k, s, n, s.xn.data(), s.out.data());
    } else {
      a = prepare_acts(pool, k, act_type_for(L.w_gate.type), s.xn.data(), n, n_embd, s.acts.data());
      matmul(pool, k, a, {{&L.w_gate, s.ff_a.data(), n_ff}, {&L.w_up, s.ff_b.data(), n_ff}});
      for (size_t j = 0; j < size_t(n) * n_ff; ++j) s.ff_a[j] = layer_ops::silu(s.ff_a[j]) * s.ff_b[j];
      a = prepare_acts(pool, k, act_type_for(L.w_down.type), s.ff_a.data(), n, n_ff, s.acts.data());
      matmul(pool, k, a, {{&L.w_down, s.out.data(), n_embd}});
    }
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

void apply_k_shift_deepseek2(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s) {
  if (!cache.has_shift()) return;
  const Hparams& hp = model.hparams();
  const int32_t n_rot = hp.n_rot, row = hp.mla_row_elems();
  const layer_ops::RopeParams rp = ds2::rope_params(hp);
  s.shift_cells.clear();
  for (uint32_t c = 0; c < cache.n_cells(); ++c)
    if (!cache.cell_empty(c) && cache.cell_shift(c) != 0) s.shift_cells.push_back(c);
  pool.run([&](int ith, int nth) {
    int64_t c0, c1;
    split_range(int64_t(s.shift_cells.size()), ith, nth, 1, &c0, &c1);
    float* buf = s.kshift.data() + size_t(ith) * (row + n_rot);  // [row] then [n_rot] cos/sin
    float* cs = buf + row;
    for (int64_t j = c0; j < c1; ++j) {
      const uint32_t c = s.shift_cells[j];
      layer_ops::rope_table(cache.cell_shift(c), rp, cs);
      for (uint32_t il = 0; il < hp.n_layer; ++il) {
        const KvRowSpec& ls = cache.layout().layer(il).streams[0];
        uint8_t* r = cache.row(il, 0, c);
        // Only the RoPE part rotates. Where the layout says it is separately addressable, the
        // latent part's bytes are not touched at all; else (q8_KV) the row is requantized whole.
        const int32_t n_conv = ls.latent_offset_bytes ? n_rot : row;
        dequantize_row_ref(ls.dtype, r, buf, n_conv);
        layer_ops::rope_rotate(buf, n_rot, cs);
        k.store_row(ls.dtype, buf, r, n_conv);
      }
    }
  });
  cache.shift_clear();
}

}  // namespace kvstash
