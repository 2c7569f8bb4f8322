// Tiled attention: scratch geometry, the softmax exp and the portable reference kernel.
// The reference performs, per query, exactly the per-lane operations of the SIMD kernel
// (fma chains in the same order, the same exp, the same fixed tile-sum tree), written plainly.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/attention.h"
#include "core/kernels.h"

namespace kvstash {
namespace {

constexpr size_t align64(size_t n) { return (n + 63) / 64 * 64; }

float load_float(DType t, const uint8_t* row, int32_t i) {
  switch (t) {
    case DType::F16: return fp16_to_fp32(reinterpret_cast<const fp16_t*>(row)[i]);
    case DType::BF16: return bf16_to_fp32(reinterpret_cast<const bf16_t*>(row)[i]);
    default: return reinterpret_cast<const float*>(row)[i];
  }
}

}  // namespace

AttnScratchLayout::AttnScratchLayout(int32_t head_dim, int32_t v_row_elems, int32_t n_queries) {
  const size_t hd = size_t(head_dim), vre = size_t(v_row_elems), nq = size_t(n_queries), kt = size_t(kAttnKeyTile);
  hd_pad = static_cast<int32_t>((hd + kQK8_0 - 1) / kQK8_0 * kQK8_0);
  n_sb = hd_pad / kQK8_0;
  // The query as the quantizer writes it: Q8_0 blocks or one Q8_KV row, whichever is larger.
  const size_t qconv_bytes = std::max(dtype_row_bytes(DType::Q8_0, size_t(hd_pad)), dtype_row_bytes(DType::Q8_KV, hd));
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off += align64(bytes);
    return at;
  };
  kf_off = take(hd * kt * sizeof(float));
  kq_off = take(kt * size_t(hd_pad));
  dk_off = take(size_t(n_sb) * kt * sizeof(float));
  vt_off = take(kt * vre * sizeof(float));
  qq_off = take(nq * size_t(hd_pad));
  dq_off = take(nq * size_t(n_sb) * sizeof(float));
  qconv_off = take(qconv_bytes);
  m_off = take(nq * sizeof(float));
  l_off = take(nq * sizeof(float));
  p_off = take(kt * sizeof(float));
  total_bytes = off;
}

float attn_exp_ref(float x) {
  // Cephes expf: exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in two parts.
  if (!(x >= -87.0f)) return 0.0f;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  const float y = std::fma(p, r * r, r) + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return y * two_n;
}

void attn_group_scalar(const AttnGroup& g) {
  constexpr int32_t kT = kAttnKeyTile;
  const int32_t hd = g.head_dim, nh = g.n_head, nq = g.n_tok * g.n_head;
  const int32_t vre = g.v_row_elems, vd = g.v_dim;
  const AttnScratchLayout sl(hd, vre, nq);
  const int32_t hd_pad = sl.hd_pad;
  auto* kf = reinterpret_cast<float*>(g.scratch + sl.kf_off);  // [hd, 32]
  auto* kq = reinterpret_cast<int8_t*>(g.scratch + sl.kq_off);  // [32, hd_pad]
  auto* dk = reinterpret_cast<float*>(g.scratch + sl.dk_off);  // [n_sb, 32]
  auto* vt = reinterpret_cast<float*>(g.scratch + sl.vt_off);  // [32, vre]
  auto* qq = reinterpret_cast<int8_t*>(g.scratch + sl.qq_off);  // [nq, hd_pad]
  auto* dq = reinterpret_cast<float*>(g.scratch + sl.dq_off);  // [nq, n_sb]
  uint8_t* qconv = g.scratch + sl.qconv_off;
  auto* m = reinterpret_cast<float*>(g.scratch + sl.m_off);
  auto* l = reinterpret_cast<float*>(g.scratch + sl.l_off);
  auto* p = reinterpret_cast<float*>(g.scratch + sl.p_off);
  const DType qt = vec_dot_type(g.k_type);
  const bool quant_k = qt != DType::F32;
  // Scale blocks: 32 elements (Q8_0, Q4_0) or the whole zero-padded row (Q8_KV).
  const int32_t n_sb = g.k_type == DType::Q8_KV ? 1 : hd_pad / kQK8_0;
  const int32_t sb_elems = hd_pad / n_sb;

  int32_t max_vis = 0;
  for (int32_t t = 0; t < g.n_tok; ++t) max_vis = std::max(max_vis, g.n_vis[t]);
  for (int32_t qi = 0; qi < nq; ++qi) {
    const int32_t t = qi / nh, h = qi % nh;
    m[qi] = -std::numeric_limits<float>::infinity();
    l[qi] = 0.0f;
    std::fill_n(g.out + t * g.out_tok_stride + size_t(h) * vd, vd, 0.0f);
    if (!quant_k) continue;
    const float* qrow = g.q + t * g.q_tok_stride + size_t(h) * hd;
    int8_t* qi8 = qq + size_t(qi) * hd_pad;
    std::fill_n(qi8, hd_pad, int8_t(0));
    quantize_row_ref(qt, qrow, qconv, hd);
    if (qt == DType::Q8_KV) {
      std::memcpy(&dq[qi], qconv, sizeof(float));
      std::memcpy(qi8, qconv + kQ8KvHeaderBytes, size_t(hd));
    } else {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(qconv);
      for (int32_t ib = 0; ib < n_sb; ++ib) {
        dq[size_t(qi) * n_sb + ib] = fp16_to_fp32(b[ib].d);
        std::memcpy(qi8 + ib * kQK8_0, b[ib].qs, kQK8_0);
      }
    }
  }

  for (int32_t k0 = 0; k0 < max_vis; k0 += kT) {
    const int32_t kn = std::min(kT, max_vis - k0);
    // ---- K and V tiles: keys k0 .. k0 + kn, zero beyond ----
    std::fill_n(kf, size_t(hd) * kT, 0.0f);
    std::fill_n(kq, size_t(kT) * hd_pad, int8_t(0));
    std::fill_n(dk, size_t(n_sb) * kT, 0.0f);
    for (int32_t j = 0; j < kn; ++j) {
      const uint8_t* kr = g.k + size_t(g.cells[k0 + j]) * g.k_cell_bytes;
      if (!quant_k) {
        for (int32_t d = 0; d < hd; ++d) kf[size_t(d) * kT + j] = load_float(g.k_type, kr, d);
      } else if (g.k_type == DType::Q8_KV) {
        std::memcpy(&dk[j], kr, sizeof(float));
        std::memcpy(kq + size_t(j) * hd_pad, kr + kQ8KvHeaderBytes, size_t(hd));
      } else if (g.k_type == DType::Q8_0) {
        const auto* b = reinterpret_cast<const BlockQ8_0*>(kr);
        for (int32_t ib = 0; ib < n_sb; ++ib) {
          dk[ib * kT + j] = fp16_to_fp32(b[ib].d);
          std::memcpy(kq + size_t(j) * hd_pad + ib * kQK8_0, b[ib].qs, kQK8_0);
        }
      } else {  // Q4_0
        const auto* b = reinterpret_cast<const BlockQ4_0*>(kr);
        for (int32_t ib = 0; ib < n_sb; ++ib) {
          dk[ib * kT + j] = fp16_to_fp32(b[ib].d);
          int8_t* o = kq + size_t(j) * hd_pad + ib * kQK4_0;
          for (int e = 0; e < kQK4_0 / 2; ++e) {
            o[e] = static_cast<int8_t>((b[ib].qs[e] & 0x0f) - 8);
            o[e + kQK4_0 / 2] = static_cast<int8_t>((b[ib].qs[e] >> 4) - 8);
          }
        }
      }
      // V: dequantized; a quantized element is scale * q (the same product the SIMD kernel forms).
      dequantize_row_ref(g.v_type, g.v + size_t(g.cells[k0 + j]) * g.v_cell_bytes, vt + size_t(j) * vre, vre);
    }

    // ---- every query against the tile ----
    for (int32_t qi = 0; qi < nq; ++qi) {
      const int32_t t = qi / nh, h = qi % nh;
      const int32_t jn = std::min(kn, g.n_vis[t] - k0);
      if (jn <= 0) continue;
      const float* qrow = g.q + t * g.q_tok_stride + size_t(h) * hd;
      float s[kT];
      for (int32_t j = 0; j < kT; ++j) {
        float acc = 0.0f;
        if (!quant_k) {
          for (int32_t d = 0; d < hd; ++d) acc = std::fma(qrow[d], kf[size_t(d) * kT + j], acc);
        } else {
          const int8_t* kr = kq + size_t(j) * hd_pad;
          const int8_t* qr = qq + size_t(qi) * hd_pad;
          for (int32_t ib = 0; ib < n_sb; ++ib) {
            int32_t isum = 0;
            for (int32_t e = ib * sb_elems; e < (ib + 1) * sb_elems; ++e) isum += int32_t(kr[e]) * qr[e];
            acc = std::fma(static_cast<float>(isum), dk[ib * kT + j] * dq[size_t(qi) * n_sb + ib], acc);
          }
        }
        s[j] = j < jn ? acc * g.scale : -std::numeric_limits<float>::infinity();
      }
      float tmax = s[0];
      for (int32_t j = 1; j < jn; ++j) tmax = std::max(tmax, s[j]);
      const float m_new = std::max(m[qi], tmax);
      const float alpha = m[qi] == -std::numeric_limits<float>::infinity() ? 0.0f : attn_exp_ref(m[qi] - m_new);
      for (int32_t j = 0; j < kT; ++j) p[j] = attn_exp_ref(s[j] - m_new);
      // Tile sum in the SIMD kernel's fixed tree: four 8-lane vectors added pairwise, then hsum.
      float w[8];
      for (int i = 0; i < 8; ++i) w[i] = (p[i] + p[8 + i]) + (p[16 + i] + p[24 + i]);
      const float tsum = ((w[0] + w[4]) + (w[2] + w[6])) + ((w[1] + w[5]) + (w[3] + w[7]));
      l[qi] = std::fma(l[qi], alpha, tsum);
      m[qi] = m_new;
      float* o = g.out + t * g.out_tok_stride + size_t(h) * vd;
      for (int32_t d = 0; d < vd; ++d) {
        float x = o[d] * alpha;
        for (int32_t j = 0; j < jn; ++j) x = std::fma(p[j], vt[size_t(j) * vre + g.v_elem0 + d], x);
        o[d] = x;
      }
    }
  }

  for (int32_t qi = 0; qi < nq; ++qi) {
    const float inv = l[qi] > 0.0f ? 1.0f / l[qi] : 0.0f;
    float* o = g.out + (qi / nh) * g.out_tok_stride + size_t(qi % nh) * vd;
    for (int32_t d = 0; d < vd; ++d) o[d] *= inv;
  }
}

}  // namespace kvstash
