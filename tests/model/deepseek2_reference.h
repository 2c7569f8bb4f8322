// A plain float64 reference of a deepseek2 model whose every layer is MLA attention + MoE FFN,
// written from the GGUF directly (tensor names and keys as llama.cpp's), independently of
// src/model: weights are dequantized to double, attention decompresses K and V from the latent
// (the textbook form), routing is recomputed from scratch. For tests only: slow, allocates freely.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gguf/gguf_reader.h"

namespace kvstash::test {

class Deepseek2Reference {
 public:
  explicit Deepseek2Reference(const GgufFile& f) : f_(f) {
    const std::string a = "deepseek2.";
    n_embd_ = u(a + "embedding_length");
    n_layer_ = u(a + "block_count");
    n_head_ = u(a + "attention.head_count");
    n_kv_ = u(a + "attention.kv_lora_rank");
    n_rot_ = u(a + "rope.dimension_count");
    const bool mla = f.find(a + "attention.key_length_mla") != nullptr;
    hd_ = u(a + (mla ? "attention.key_length_mla" : "attention.key_length"));
    hd_v_ = u(a + (mla ? "attention.value_length_mla" : "attention.value_length"));
    nope_ = hd_ - n_rot_;
    n_lq_ = f.find(a + "attention.q_lora_rank") ? u(a + "attention.q_lora_rank") : 0;
    n_exp_ = u(a + "expert_count");
    n_used_ = u(a + "expert_used_count");
    n_shared_ = u(a + "expert_shared_count");
    n_ff_exp_ = u(a + "expert_feed_forward_length");
    w_scale_ = d(a + "expert_weights_scale");
    w_norm_ = f.find(a + "expert_weights_norm") && f.get_bool(a + "expert_weights_norm").value();
    sigmoid_ = f.find(a + "expert_gating_func") && u(a + "expert_gating_func") == 2;
    n_groups_ = f.find(a + "expert_group_count") ? u(a + "expert_group_count") : 0;
    n_groups_used_ = n_groups_ > 1 ? u(a + "expert_group_used_count") : 0;
    eps_ = d(a + "attention.layer_norm_rms_epsilon");
    base_ = f.find(a + "rope.freq_base") ? d(a + "rope.freq_base") : 10000.0;
    yarn_ = f.find(a + "rope.scaling.type") && f.get_string(a + "rope.scaling.type").value() == "yarn";
    factor_ = yarn_ ? d(a + "rope.scaling.factor") : 1.0;
    n_ctx_orig_ = yarn_ ? u(a + "rope.scaling.original_context_length") : 0;
    log_mul_ = yarn_ ? d(a + "rope.scaling.yarn_log_multiplier") : 0.0;
    if (f.find(a + "leading_dense_block_count") && u(a + "leading_dense_block_count") != 0)
      throw std::runtime_error("reference: every layer must be MoE");
  }

  uint32_t n_vocab() const { return static_cast<uint32_t>(f_.find_tensor("token_embd.weight")->ne[1]); }

  // Smallest gap, over every token and layer seen, between the last selected and the first
  // rejected selection score (a route is only meaningful to compare when this is not tiny).
  double min_route_margin() const { return min_margin_; }

  // Logits [n, n_vocab] of tokens at positions pos0.. of one sequence (causal attention).
  std::vector<std::vector<double>> logits(const std::vector<int32_t>& tokens, int32_t pos0) {
    const size_t n = tokens.size();
    std::vector<std::vector<double>> x(n);
    for (size_t t = 0; t < n; ++t) x[t] = row("token_embd.weight", tokens[t]);
    for (uint32_t il = 0; il < n_layer_; ++il) {
      const std::string p = "blk." + std::to_string(il) + ".";
      attention(p, x, pos0);
      for (size_t t = 0; t < n; ++t) {
        const auto h = rms_norm(x[t], vec(p + "ffn_norm.weight"));
        const auto y = moe(p, h);
        for (uint32_t i = 0; i < n_embd_; ++i) x[t][i] += y[i];
      }
    }
    std::vector<std::vector<double>> out(n);
    const char* out_name = f_.find_tensor("output.weight") ? "output.weight" : "token_embd.weight";
    for (size_t t = 0; t < n; ++t) out[t] = matvec(out_name, rms_norm(x[t], vec("output_norm.weight")));
    return out;
  }

 private:
  uint32_t u(const std::string& k) const { return static_cast<uint32_t>(f_.get_u64(k).value()); }
  double d(const std::string& k) const { return f_.get_f64(k).value(); }

  // Row r of a tensor (any type; 3-D tensors are addressed by their flat row index).
  std::vector<double> row(const std::string& name, uint64_t r) const {
    const GgufTensorInfo* t = f_.find_tensor(name);
    if (!t) throw std::runtime_error("reference: missing " + name);
    std::vector<float> fl(t->ne[0]);
    dequantize_row_ref(t->type, t->data + r * t->row_bytes(), fl.data(), static_cast<int64_t>(t->ne[0]));
    return std::vector<double>(fl.begin(), fl.end());
  }
  std::vector<double> vec(const std::string& name) const { return row(name, 0); }
  // W x for W of rows [r0, r0 + n_rows) (all rows when n_rows == 0).
  std::vector<double> matvec(const std::string& name, const std::vector<double>& x, uint64_t r0 = 0, uint64_t n_rows = 0) const {
    const GgufTensorInfo* t = f_.find_tensor(name);
    if (!t) throw std::runtime_error("reference: missing " + name);
    if (n_rows == 0) n_rows = t->n_rows();
    std::vector<double> y(n_rows);
    for (uint64_t r = 0; r < n_rows; ++r) {
      const auto w = row(name, r0 + r);
      y[r] = std::inner_product(w.begin(), w.end(), x.begin(), 0.0);
    }
    return y;
  }
  std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<double>& w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / x.size() + eps_);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
    return y;
  }
  // Pairwise (non-NeoX) RoPE with YaRN, in double.
  void rope(double* v, int32_t pos) const {
    const double fs = 1.0 / factor_;
    double lo = 0, hi = 0;
    if (yarn_) {
      auto corr = [&](double rot) { return n_rot_ * std::log(n_ctx_orig_ / (rot * 2 * M_PI)) / (2 * std::log(base_)); };
      lo = std::max(0.0, std::floor(corr(32.0)));
      hi = std::min(double(n_rot_ - 1), std::ceil(corr(1.0)));
    }
    for (uint32_t i = 0; i < n_rot_ / 2; ++i) {
      const double extrap = pos * std::pow(base_, -2.0 * i / n_rot_);
      double theta = fs * extrap;
      if (yarn_) {
        const double ramp = 1.0 - std::min(1.0, std::max(0.0, (i - lo) / std::max(0.001, hi - lo)));
        theta = fs * extrap * (1 - ramp) + extrap * ramp;
      }
      const double c = std::cos(theta), s = std::sin(theta), x0 = v[2 * i], x1 = v[2 * i + 1];
      v[2 * i] = x0 * c - x1 * s;
      v[2 * i + 1] = x0 * s + x1 * c;
    }
  }

  void attention(const std::string& p, std::vector<std::vector<double>>& x, int32_t pos0) {
    const size_t n = x.size();
    std::vector<std::vector<double>> q(n), knope(n), v(n), krope(n);
    for (size_t t = 0; t < n; ++t) {
      const auto h = rms_norm(x[t], vec(p + "attn_norm.weight"));
      q[t] = n_lq_ ? matvec(p + "attn_q_b.weight", rms_norm(matvec(p + "attn_q_a.weight", h), vec(p + "attn_q_a_norm.weight")))
                   : matvec(p + "attn_q.weight", h);
      const auto kv = matvec(p + "attn_kv_a_mqa.weight", h);  // [latent, k_rope]
      const auto c = rms_norm(std::vector<double>(kv.begin(), kv.begin() + n_kv_), vec(p + "attn_kv_a_norm.weight"));
      krope[t].assign(kv.begin() + n_kv_, kv.end());
      rope(krope[t].data(), pos0 + static_cast<int32_t>(t));
      for (uint32_t hh = 0; hh < n_head_; ++hh) rope(q[t].data() + hh * hd_ + nope_, pos0 + static_cast<int32_t>(t));
      knope[t].assign(size_t(n_head_) * nope_, 0.0);
      v[t].assign(size_t(n_head_) * hd_v_, 0.0);
      for (uint32_t hh = 0; hh < n_head_; ++hh) {
        std::vector<double> kn, vv;
        if (f_.find_tensor(p + "attn_kv_b.weight")) {
          kn = matvec(p + "attn_kv_b.weight", c, uint64_t(hh) * (nope_ + hd_v_), nope_);
          vv = matvec(p + "attn_kv_b.weight", c, uint64_t(hh) * (nope_ + hd_v_) + nope_, hd_v_);
        } else {  // split: k_b [n_head][n_kv][nope] (k_nope = k_b^T c), v_b [n_head][hd_v][n_kv]
          kn.assign(nope_, 0.0);
          for (uint32_t r = 0; r < n_kv_; ++r) {
            const auto kb = row(p + "attn_k_b.weight", uint64_t(hh) * n_kv_ + r);
            for (uint32_t j = 0; j < nope_; ++j) kn[j] += kb[j] * c[r];
          }
          vv = matvec(p + "attn_v_b.weight", c, uint64_t(hh) * hd_v_, hd_v_);
        }
        std::copy(kn.begin(), kn.end(), knope[t].begin() + size_t(hh) * nope_);
        std::copy(vv.begin(), vv.end(), v[t].begin() + size_t(hh) * hd_v_);
      }
    }
    const double mscale = 1.0 + log_mul_ * std::log(factor_);
    const double scale = mscale * mscale / std::sqrt(double(hd_));
    for (size_t t = 0; t < n; ++t) {
      std::vector<double> o(size_t(n_head_) * hd_v_, 0.0);
      for (uint32_t hh = 0; hh < n_head_; ++hh) {
        std::vector<double> sc(t + 1);
        double mx = -INFINITY;
        for (size_t j = 0; j <= t; ++j) {
          double s = 0;
          for (uint32_t i = 0; i < nope_; ++i) s += q[t][hh * hd_ + i] * knope[j][hh * nope_ + i];
          for (uint32_t i = 0; i < n_rot_; ++i) s += q[t][hh * hd_ + nope_ + i] * krope[j][i];
          sc[j] = s * scale;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (double& s : sc) sum += (s = std::exp(s - mx));
        for (size_t j = 0; j <= t; ++j)
          for (uint32_t i = 0; i < hd_v_; ++i) o[hh * hd_v_ + i] += sc[j] / sum * v[j][hh * hd_v_ + i];
      }
      const auto y = matvec(p + "attn_output.weight", o);
      for (uint32_t i = 0; i < n_embd_; ++i) x[t][i] += y[i];
    }
  }

  static double silu(double v) { return v / (1.0 + std::exp(-v)); }

  std::vector<double> swiglu(const std::string& gate, const std::string& up, const std::string& down, const std::vector<double>& h,
                             uint64_t e, uint64_t n_ff) const {
    const auto g = matvec(gate, h, e * n_ff, n_ff), uu = matvec(up, h, e * n_ff, n_ff);
    std::vector<double> a(n_ff);
    for (uint64_t i = 0; i < n_ff; ++i) a[i] = silu(g[i]) * uu[i];
    return matvec(down, a, e * n_embd_, n_embd_);
  }

  std::vector<double> moe(const std::string& p, const std::vector<double>& h) {
    const auto logit = matvec(p + "ffn_gate_inp.weight", h);
    std::vector<double> prob(n_exp_), score(n_exp_);
    if (sigmoid_) {
      for (uint32_t e = 0; e < n_exp_; ++e) prob[e] = 1.0 / (1.0 + std::exp(-logit[e]));
    } else {
      const double mx = *std::max_element(logit.begin(), logit.end());
      double sum = 0;
      for (uint32_t e = 0; e < n_exp_; ++e) sum += (prob[e] = std::exp(logit[e] - mx));
      for (double& v : prob) v /= sum;
    }
    const bool bias = f_.find_tensor(p + "exp_probs_b.bias") != nullptr;
    const auto b = bias ? vec(p + "exp_probs_b.bias") : std::vector<double>(n_exp_, 0.0);
    for (uint32_t e = 0; e < n_exp_; ++e) score[e] = prob[e] + b[e];
    if (n_groups_ > 1) {  // keep the groups with the best sums of their two best scores
      const uint32_t per = n_exp_ / n_groups_;
      std::vector<std::pair<double, uint32_t>> gs;
      for (uint32_t g = 0; g < n_groups_; ++g) {
        std::vector<double> v(score.begin() + g * per, score.begin() + (g + 1) * per);
        std::sort(v.rbegin(), v.rend());
        gs.push_back({v[0] + v[1], g});
      }
      std::sort(gs.begin(), gs.end(), [](auto& l, auto& r) { return l.first > r.first || (l.first == r.first && l.second < r.second); });
      for (uint32_t j = n_groups_used_; j < n_groups_; ++j)
        for (uint32_t e = gs[j].second * per; e < (gs[j].second + 1) * per; ++e) score[e] = -INFINITY;
    }
    std::vector<uint32_t> idx(n_exp_);
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](uint32_t l, uint32_t r) { return score[l] > score[r] || (score[l] == score[r] && l < r); });
    if (n_used_ < n_exp_ && std::isfinite(score[idx[n_used_]])) min_margin_ = std::min(min_margin_, score[idx[n_used_ - 1]] - score[idx[n_used_]]);
    std::vector<double> w(n_used_);
    double wsum = 0;
    for (uint32_t r = 0; r < n_used_; ++r) wsum += (w[r] = prob[idx[r]]);
    if (w_norm_)
      for (double& v : w) v /= std::max(wsum, 6.103515625e-5);
    if (w_scale_ != 0.0)
      for (double& v : w) v *= w_scale_;
    std::vector<double> y(n_embd_, 0.0);
    for (uint32_t r = 0; r < n_used_; ++r) {
      const auto ye = swiglu(p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight", p + "ffn_down_exps.weight", h, idx[r], n_ff_exp_);
      for (uint32_t i = 0; i < n_embd_; ++i) y[i] += w[r] * ye[i];
    }
    if (n_shared_) {
      const auto ys = swiglu(p + "ffn_gate_shexp.weight", p + "ffn_up_shexp.weight", p + "ffn_down_shexp.weight", h, 0,
                             uint64_t(n_ff_exp_) * n_shared_);
      for (uint32_t i = 0; i < n_embd_; ++i) y[i] += ys[i];
    }
    return y;
  }

  const GgufFile& f_;
  uint32_t n_embd_, n_layer_, n_head_, n_kv_, n_rot_, hd_, hd_v_, nope_, n_lq_, n_exp_, n_used_, n_shared_, n_ff_exp_;
  uint32_t n_groups_, n_groups_used_, n_ctx_orig_;
  double w_scale_, eps_, base_, factor_, log_mul_;
  bool w_norm_, sigmoid_, yarn_;
  double min_margin_ = INFINITY;
};

}  // namespace kvstash::test
