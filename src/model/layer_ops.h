// Per-row operations of the forward passes: RMSNorm, RoPE with YaRN scaling, SiLU.
// Pure functions over caller memory (no allocation); thread-safe.
// Numerics follow ggml where it matters for agreement with llama.cpp: RMSNorm sums squares in
// double; RoPE angles are built by repeated multiplication; YaRN mixes interpolated and
// extrapolated angles per dimension pair with ggml's ramp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace kvstash::layer_ops {

// y = x / rms(x) * w over n elements; y may alias x.
inline void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * scale) * w[i];
}

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

// RoPE parameters of one model: theta_i(p) = p * freq_base^(-2i / n_rot), then (YaRN, when
// ext_factor != 0) a per-pair mix of the interpolated angle freq_scale * theta and the
// extrapolated angle theta, with ramp 1 - clamp((i - corr_lo) / max(0.001, corr_hi - corr_lo), 0, 1).
// cos and sin are multiplied by mscale (1 for deepseek2: llama.cpp's attn_factor cancels YaRN's
// magnitude correction there and moves it into the attention scale instead).
struct RopeParams {
  int32_t n_rot = 0;
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  float ext_factor = 0.0f;  // 1 for YaRN, 0 otherwise
  float corr_lo = 0.0f, corr_hi = 0.0f;
  float mscale = 1.0f;
};

// ggml's YaRN correction range: the dimension pairs whose wavelength spans between beta_fast and
// beta_slow rotations over the original context.
inline void yarn_corr_dims(int32_t n_rot, uint32_t n_ctx_orig, float freq_base, float beta_fast, float beta_slow, float* lo, float* hi) {
  auto corr_dim = [&](float n_rotations) {
    return static_cast<float>(n_rot) * std::log(static_cast<float>(n_ctx_orig) / (n_rotations * 2.0f * static_cast<float>(M_PI))) /
           (2.0f * std::log(freq_base));
  };
  *lo = std::max(0.0f, std::floor(corr_dim(beta_fast)));
  *hi = std::min(static_cast<float>(n_rot - 1), std::ceil(corr_dim(beta_slow)));
}

// cos/sin of each rotated pair i for position pos: cs[2i], cs[2i+1].
inline void rope_table(int32_t pos, const RopeParams& rp, float* cs) {
  const float theta_scale = std::pow(rp.freq_base, -2.0f / static_cast<float>(rp.n_rot));
  float theta_extrap = static_cast<float>(pos);
  for (int32_t i = 0; i < rp.n_rot / 2; ++i) {
    const float theta_interp = rp.freq_scale * theta_extrap;
    float theta = theta_interp;
    if (rp.ext_factor != 0.0f) {
      const float y = (static_cast<float>(i) - rp.corr_lo) / std::max(0.001f, rp.corr_hi - rp.corr_lo);
      const float mix = (1.0f - std::min(1.0f, std::max(0.0f, y))) * rp.ext_factor;
      theta = theta_interp * (1.0f - mix) + theta_extrap * mix;
    }
    cs[2 * i] = std::cos(theta) * rp.mscale;
    cs[2 * i + 1] = std::sin(theta) * rp.mscale;
    theta_extrap *= theta_scale;
  }
}

// Normal (non-NeoX) RoPE of one vector: rotates adjacent pairs (x[2i], x[2i+1]) for i < n_rot / 2.
inline void rope_rotate(float* x, int32_t n_rot, const float* cs) {
  for (int32_t i = 0; i < n_rot / 2; ++i) {
    const float c = cs[2 * i], s = cs[2 * i + 1];
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x0 * s + x1 * c;
  }
}

}  // namespace kvstash::layer_ops
