// Mixture-of-experts feed-forward of deepseek2: router, group-limited top-k selection, routed
// SwiGLU experts (tokens grouped by expert: one product per expert over its tokens), shared
// experts. Routing follows llama.cpp's build_moe_ffn: probabilities by softmax or sigmoid; the
// selection bias (exp_probs_b) only affects which experts are chosen; the weights are the
// unbiased probabilities of the chosen experts, optionally normalized and scaled.
//
// Batch invariance: a token's route depends on its own logits only; each expert product is
// computed per element independently of the other tokens in it (kernels.h); and a token's routed
// outputs are summed in its own rank order, so the result is the same whatever the batch.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/matmul.h"
#include "model/deepseek2_ops.h"

namespace kvstash::ds2 {

void moe_route(const Hparams& hp, const float* logits, const float* bias, float* tmp, int32_t* idx, int32_t* sel, float* w) {
  const int32_t n_e = hp.n_expert, n_used = hp.n_expert_used;
  float* probs = tmp;           // [n_expert]
  float* score = tmp + n_e;     // [n_expert] selection scores
  float* gscore = tmp + 2 * n_e;  // [n_expert_groups]
  if (hp.expert_gating == ExpertGating::Softmax) {
    float mx = -INFINITY;
    for (int32_t e = 0; e < n_e; ++e) mx = std::max(mx, logits[e]);
    double sum = 0.0;
    for (int32_t e = 0; e < n_e; ++e) {
      probs[e] = std::exp(logits[e] - mx);
      sum += probs[e];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int32_t e = 0; e < n_e; ++e) probs[e] *= inv;
  } else {
    for (int32_t e = 0; e < n_e; ++e) probs[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  }
  for (int32_t e = 0; e < n_e; ++e) score[e] = bias ? probs[e] + bias[e] : probs[e];

  // Ties go to the lower index, so the order is a pure function of the scores.
  auto better = [](const float* v) { return [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); }; };
  if (hp.n_expert_groups > 1) {
    // Group-limited routing (DeepSeek-V3, as llama.cpp): a group scores the sum of its two best
    // selection scores; experts outside the best n_expert_groups_used groups are excluded.
    const int32_t n_g = hp.n_expert_groups, per = n_e / n_g;
    for (int32_t g = 0; g < n_g; ++g) {
      float b0 = -INFINITY, b1 = -INFINITY;
      for (int32_t e = g * per; e < (g + 1) * per; ++e) {
        if (score[e] > b0) {
          b1 = b0;
          b0 = score[e];
        } else if (score[e] > b1) {
          b1 = score[e];
        }
      }
      gscore[g] = b0 + b1;
    }
    for (int32_t g = 0; g < n_g; ++g) idx[g] = g;
    std::partial_sort(idx, idx + hp.n_expert_groups_used, idx + n_g, better(gscore));
    for (int32_t g = 0; g < n_g; ++g) {
      bool keep = false;
      for (uint32_t j = 0; j < hp.n_expert_groups_used; ++j) keep |= idx[j] == g;
      if (!keep)
        for (int32_t e = g * per; e < (g + 1) * per; ++e) score[e] = -INFINITY;
    }
  }
  for (int32_t e = 0; e < n_e; ++e) idx[e] = e;
  std::partial_sort(idx, idx + n_used, idx + n_e, better(score));
  for (int32_t r = 0; r < n_used; ++r) {
    sel[r] = idx[r];
    w[r] = probs[idx[r]];
  }
  if (hp.expert_weights_norm) {
    float sum = 0.0f;
    for (int32_t r = 0; r < n_used; ++r) sum += w[r];
    sum = std::max(sum, 6.103515625e-5f);  // llama.cpp: clamped at the smallest normal f16
    for (int32_t r = 0; r < n_used; ++r) w[r] /= sum;
  }
  if (hp.expert_weights_scale != 0.0f && hp.expert_weights_scale != 1.0f)
    for (int32_t r = 0; r < n_used; ++r) w[r] *= hp.expert_weights_scale;
}

void moe_ffn(const Hparams& hp, const Deepseek2Layer& L, ThreadPool& pool, const KernelSet& k, ForwardScratch& s, int32_t n,
             const float* x, float* y) {
  MlaMoeScratch& ms = s.mla;
  const int32_t n_e = hp.n_expert, n_used = hp.n_expert_used, n_embd = hp.n_embd, ff = hp.n_ff_exp;
  const int32_t n_slots = n * n_used;

  // ---- router ----
  Acts a = prepare_acts(pool, k, act_type_for(L.gate_inp.type), x, n, n_embd, s.acts.data());
  matmul(pool, k, a, {{&L.gate_inp, ms.router.data(), n_e}});
  for (int32_t t = 0; t < n; ++t)
    moe_route(hp, ms.router.data() + size_t(t) * n_e, L.exp_probs_b, ms.route_tmp.data(), ms.route_idx.data(),
              ms.sel.data() + size_t(t) * n_used, ms.sel_w.data() + size_t(t) * n_used);

  // ---- slots grouped by expert (counting sort; batch order within an expert) ----
  std::fill(ms.exp_off.begin(), ms.exp_off.end(), 0);
  for (int32_t j = 0; j < n_slots; ++j) ++ms.exp_off[ms.sel[j] + 1];
  for (int32_t e = 0; e < n_e; ++e) ms.exp_off[e + 1] += ms.exp_off[e];
  int32_t* cursor = ms.route_idx.data();  // [n_expert], free again after routing
  for (int32_t e = 0; e < n_e; ++e) cursor[e] = ms.exp_off[e];
  for (int32_t j = 0; j < n_slots; ++j) {
    const int32_t sl = cursor[ms.sel[j]]++;
    ms.slot[j] = sl;
    ms.slot_tok[sl] = j / n_used;
  }

  // ---- routed experts: gather, gate/up, SwiGLU, down ----
  a = prepare_acts(pool, k, act_type_for(L.gate_exps[0].type), x, n, n_embd, s.acts.data());
  for (int32_t sl = 0; sl < n_slots; ++sl) std::memcpy(ms.moe_x.data() + size_t(sl) * a.row_bytes, a.data + size_t(ms.slot_tok[sl]) * a.row_bytes, a.row_bytes);
  ms.tasks.clear();
  for (int32_t e = 0; e < n_e; ++e) {
    const int32_t o = ms.exp_off[e], cnt = ms.exp_off[e + 1] - o;
    if (cnt == 0) continue;
    const uint8_t* xe = ms.moe_x.data() + size_t(o) * a.row_bytes;
    ms.tasks.push_back({&L.gate_exps[e], xe, a.row_bytes, cnt, ms.moe_g.data() + size_t(o) * ff, ff});
    ms.tasks.push_back({&L.up_exps[e], xe, a.row_bytes, cnt, ms.moe_u.data() + size_t(o) * ff, ff});
  }
  matmul_tasks(pool, k, ms.tasks.data(), ms.tasks.size());
  for (size_t j = 0; j < size_t(n_slots) * ff; ++j) ms.moe_g[j] = layer_ops::silu(ms.moe_g[j]) * ms.moe_u[j];
  const Acts h = prepare_acts(pool, k, act_type_for(L.down_exps[0].type), ms.moe_g.data(), n_slots, ff, ms.moe_h.data());
  ms.tasks.clear();
  for (int32_t e = 0; e < n_e; ++e) {
    const int32_t o = ms.exp_off[e], cnt = ms.exp_off[e + 1] - o;
    if (cnt == 0) continue;
    ms.tasks.push_back({&L.down_exps[e], h.data + size_t(o) * h.row_bytes, h.row_bytes, cnt, ms.moe_y.data() + size_t(o) * n_embd, n_embd});
  }
  matmul_tasks(pool, k, ms.tasks.data(), ms.tasks.size());

  // ---- shared experts: one SwiGLU of n_ff_exp * n_expert_shared ----
  if (hp.n_expert_shared > 0) {
    const int32_t n_ff_sh = ff * static_cast<int32_t>(hp.n_expert_shared);
    a = prepare_acts(pool, k, act_type_for(L.gate_shexp.type), x, n, n_embd, s.acts.data());
    matmul(pool, k, a, {{&L.gate_shexp, s.ff_a.data(), n_ff_sh}, {&L.up_shexp, s.ff_b.data(), n_ff_sh}});
    for (size_t j = 0; j < size_t(n) * n_ff_sh; ++j) s.ff_a[j] = layer_ops::silu(s.ff_a[j]) * s.ff_b[j];
    a = prepare_acts(pool, k, act_type_for(L.down_shexp.type), s.ff_a.data(), n, n_ff_sh, s.acts.data());
    matmul(pool, k, a, {{&L.down_shexp, ms.shared.data(), n_embd}});
  }

  // ---- combine: y[t] = sum over ranks r of w[t, r] * expert output (rank order), + shared ----
  for (int32_t t = 0; t < n; ++t) {
    float* yt = y + size_t(t) * n_embd;
    for (int32_t r = 0; r < n_used; ++r) {
      const float w = ms.sel_w[size_t(t) * n_used + r];
      const float* ye = ms.moe_y.data() + size_t(ms.slot[size_t(t) * n_used + r]) * n_embd;
      if (r == 0)
        for (int32_t i = 0; i < n_embd; ++i) yt[i] = w * ye[i];
      else
        for (int32_t i = 0; i < n_embd; ++i) yt[i] += w * ye[i];
    }
    if (hp.n_expert_shared > 0) {
      const float* sh = ms.shared.data() + size_t(t) * n_embd;
      for (int32_t i = 0; i < n_embd; ++i) yt[i] += sh[i];
    }
  }
}

}  // namespace kvstash::ds2
