// Tiled attention, AVX2/FMA/F16C. Compiled with -mavx2 -mfma -mf16c; reached only through
// avx2_kernels(). Per query this performs exactly the operations of attn_group_scalar
// (attention_scalar.cpp), one key per lane: scores are fma chains over the head dimension
// (float K, tile transposed so 8 keys fill a vector) or exact int32 block dots (quantized K);
// the tile max, exp, the fixed tile-sum tree and the output fma chain over keys follow.
#include "core/attention.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/kernels.h"
#include "core/simd_avx2.h"

namespace kvstash {
namespace {

using simd::hsum;
using simd::load1;
using simd::load8;

constexpr int32_t kT = kAttnKeyTile;
static_assert(kT == 32, "a tile is four 8-lane vectors of keys");

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// attn_exp_ref, eight lanes at a time: the same operations in the same order.
inline __m256 exp8(__m256 x) {
  const __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // keeps the unused lanes' 2^n finite
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), ok);
}

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Float K tile, transposed: kf[d * 32 + j] = K[key k0 + j][d]; keys >= kn are zero.
template <DType W>
void load_k_float(const AttnGroup& g, int32_t k0, int32_t kn, float* kf) {
  const int32_t hd = g.head_dim, hd8 = hd & ~7;
  for (int32_t j8 = 0; j8 < kT; j8 += 8) {
    const uint8_t* rows[8];
    for (int i = 0; i < 8; ++i) rows[i] = j8 + i < kn ? g.k + size_t(g.cells[k0 + j8 + i]) * g.k_cell_bytes : nullptr;
    for (int32_t d = 0; d < hd8; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = rows[i] ? load8<W>(rows[i], d) : _mm256_setzero_ps();
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_store_ps(kf + size_t(d + i) * kT + j8, r[i]);
    }
    for (int32_t d = hd8; d < hd; ++d)
      for (int i = 0; i < 8; ++i) kf[size_t(d) * kT + j8 + i] = rows[i] ? load1<W>(rows[i], d) : 0.0f;
  }
}

// Quantized K tile: kq rows of hd_pad int8 (zero-padded), dk[sb * 32 + j] the scales; keys >= kn zero.
void load_k_quant(const AttnGroup& g, const AttnScratchLayout& sl, int32_t k0, int32_t kn, int8_t* kq, float* dk) {
  const int32_t hd = g.head_dim, hd_pad = sl.hd_pad;
  for (int32_t j = 0; j < kT; ++j) {
    int8_t* o = kq + size_t(j) * hd_pad;
    if (j >= kn) {
      std::memset(o, 0, size_t(hd_pad));
      for (int32_t ib = 0; ib < sl.n_sb; ++ib) dk[ib * kT + j] = 0.0f;
      continue;
    }
    const uint8_t* kr = g.k + size_t(g.cells[k0 + j]) * g.k_cell_bytes;
    if (g.k_type == DType::Q8_KV) {
      std::memcpy(&dk[j], kr, sizeof(float));
      std::memcpy(o, kr + kQ8KvHeaderBytes, size_t(hd));
      std::memset(o + hd, 0, size_t(hd_pad - hd));
    } else if (g.k_type == DType::Q8_0) {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(kr);
      for (int32_t ib = 0; ib < hd / kQK8_0; ++ib) {
        dk[ib * kT + j] = _cvtsh_ss(b[ib].d);
        std::memcpy(o + ib * kQK8_0, b[ib].qs, kQK8_0);
      }
    } else {  // Q4_0
      const auto* b = reinterpret_cast<const BlockQ4_0*>(kr);
      for (int32_t ib = 0; ib < hd / kQK4_0; ++ib) {
        dk[ib * kT + j] = _cvtsh_ss(b[ib].d);
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[ib].qs));
        const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0f));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + ib * kQK4_0), _mm256_sub_epi8(u, _mm256_set1_epi8(8)));
      }
    }
  }
}

// V row dequantized to f32 (a quantized element is scale * q: the product attn_group_scalar forms).
void load_v_row(DType t, const uint8_t* vr, int32_t hd, float* o) {
  int32_t d = 0;
  switch (t) {
    case DType::F32: std::memcpy(o, vr, size_t(hd) * sizeof(float)); return;
    case DType::F16:
      for (; d + 8 <= hd; d += 8) _mm256_storeu_ps(o + d, load8<DType::F16>(vr, d));
      for (; d < hd; ++d) o[d] = load1<DType::F16>(vr, d);
      return;
    case DType::BF16:
      for (; d + 8 <= hd; d += 8) _mm256_storeu_ps(o + d, load8<DType::BF16>(vr, d));
      for (; d < hd; ++d) o[d] = load1<DType::BF16>(vr, d);
      return;
    case DType::Q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(vr);
      for (int32_t ib = 0; ib < hd / kQK8_0; ++ib) {
        const __m256 dv = _mm256_set1_ps(_cvtsh_ss(b[ib].d));
        for (int i = 0; i < kQK8_0; i += 8) {
          const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[ib].qs + i))));
          _mm256_storeu_ps(o + ib * kQK8_0 + i, _mm256_mul_ps(q, dv));
        }
      }
      return;
    }
    case DType::Q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(vr);
      for (int32_t ib = 0; ib < hd / kQK4_0; ++ib) {
        const __m256 dv = _mm256_set1_ps(_cvtsh_ss(b[ib].d));
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[ib].qs));
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, _mm_set1_epi8(0x0f)), _mm_set1_epi8(8));
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f)), _mm_set1_epi8(8));
        float* ob = o + ib * kQK4_0;
        _mm256_storeu_ps(ob, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), dv));
        _mm256_storeu_ps(ob + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), dv));
        _mm256_storeu_ps(ob + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), dv));
        _mm256_storeu_ps(ob + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), dv));
      }
      return;
    }
    case DType::Q8_KV: {
      float dsc;
      std::memcpy(&dsc, vr, sizeof dsc);
      const auto* q = reinterpret_cast<const int8_t*>(vr + kQ8KvHeaderBytes);
      const __m256 dv = _mm256_set1_ps(dsc);
      for (; d + 8 <= hd; d += 8)
        _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + d)))), dv));
      for (; d < hd; ++d) o[d] = static_cast<float>(q[d]) * dsc;
      return;
    }
  }
}

// Raw float scores of NQ queries against the 32 keys of a transposed tile: s[q][i] holds keys
// 8i .. 8i + 7, each lane the fma chain over d = 0 .. hd - 1.
template <int NQ>
inline void scores_float(const float* kf, int32_t hd, const float* const* q, __m256 s[][4]) {
  // Local accumulators (copied out at the end) stay in registers: 4 * NQ independent fma chains.
  __m256 a[NQ][4];
  #pragma GCC unroll 2
  for (int n = 0; n < NQ; ++n)
    #pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) a[n][i] = _mm256_setzero_ps();
  for (int32_t d = 0; d < hd; ++d) {
    const float* kr = kf + size_t(d) * kT;
    const __m256 k0 = _mm256_load_ps(kr), k1 = _mm256_load_ps(kr + 8), k2 = _mm256_load_ps(kr + 16), k3 = _mm256_load_ps(kr + 24);
    #pragma GCC unroll 2
    for (int n = 0; n < NQ; ++n) {
      const __m256 qd = _mm256_broadcast_ss(q[n] + d);
      a[n][0] = _mm256_fmadd_ps(qd, k0, a[n][0]);
      a[n][1] = _mm256_fmadd_ps(qd, k1, a[n][1]);
      a[n][2] = _mm256_fmadd_ps(qd, k2, a[n][2]);
      a[n][3] = _mm256_fmadd_ps(qd, k3, a[n][3]);
    }
  }
  #pragma GCC unroll 2
  for (int n = 0; n < NQ; ++n)
    #pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) s[n][i] = a[n][i];
}

// Eight int32 vectors -> one vector of their eight lane sums (exact integer adds).
inline __m256i reduce8(const __m256i a[8]) {
  const __m256i h01 = _mm256_hadd_epi32(a[0], a[1]), h23 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i h45 = _mm256_hadd_epi32(a[4], a[5]), h67 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20), _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

// Raw quantized scores of one query: per scale block, the exact int32 dots of 8 keys at a time,
// then acc = fma(float(isum), dk * dq, acc) over the blocks in order.
inline void scores_quant(const int8_t* kq, const float* dk, const int8_t* qr, const float* dqr, int32_t hd_pad, int32_t n_sb, __m256 s[4]) {
  const int32_t chunks_per_sb = hd_pad / n_sb / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < 4; ++i) s[i] = _mm256_setzero_ps();
  for (int32_t ib = 0; ib < n_sb; ++ib) {
    const __m256 dqv = _mm256_set1_ps(dqr[ib]);
    for (int i = 0; i < 4; ++i) {
      __m256i acc[8];
      for (int jj = 0; jj < 8; ++jj) acc[jj] = _mm256_setzero_si256();
      for (int32_t c = ib * chunks_per_sb; c < (ib + 1) * chunks_per_sb; ++c) {
        const __m256i qv = _mm256_load_si256(reinterpret_cast<const __m256i*>(qr + c * 32));
        #pragma GCC unroll 8
        for (int jj = 0; jj < 8; ++jj) {
          const __m256i kv = _mm256_load_si256(reinterpret_cast<const __m256i*>(kq + size_t(8 * i + jj) * hd_pad + c * 32));
          const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(kv, kv), _mm256_sign_epi8(qv, kv));
          acc[jj] = _mm256_add_epi32(acc[jj], _mm256_madd_epi16(p16, ones));
        }
      }
      const __m256 dkdq = _mm256_mul_ps(_mm256_load_ps(dk + ib * kT + 8 * i), dqv);
      s[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(acc)), dkdq, s[i]);
    }
  }
}

// Online-softmax update of one query with raw scores s (keys >= jn ignored): m, l, o.
// vt rows are vre floats apart; the values are v_dim floats starting at vt (already offset).
inline void softmax_update(__m256 s[4], int32_t jn, float scale, const float* vt, int32_t vre, int32_t v_dim, float* p, float* m, float* l, float* o) {
  const int32_t hd = v_dim;
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 sc = _mm256_set1_ps(scale);
  __m256 mx = ninf;
  for (int i = 0; i < 4; ++i) {
    const __m256 valid = _mm256_cmp_ps(_mm256_add_ps(iota, _mm256_set1_ps(float(8 * i))), _mm256_set1_ps(float(jn)), _CMP_LT_OQ);
    s[i] = _mm256_blendv_ps(ninf, _mm256_mul_ps(s[i], sc), valid);
    mx = _mm256_max_ps(mx, s[i]);
  }
  const float m_new = std::max(*m, hmax(mx));
  // exp8 lane 0 is attn_exp_ref(*m - m_new), computed here with the FMA unit instead of a libm call.
  const float alpha = *m == -std::numeric_limits<float>::infinity() ? 0.0f : _mm256_cvtss_f32(exp8(_mm256_set1_ps(*m - m_new)));
  const __m256 mv = _mm256_set1_ps(m_new);
  __m256 pv[4];
  for (int i = 0; i < 4; ++i) {
    pv[i] = exp8(_mm256_sub_ps(s[i], mv));
    _mm256_store_ps(p + 8 * i, pv[i]);
  }
  const float tsum = hsum(_mm256_add_ps(_mm256_add_ps(pv[0], pv[1]), _mm256_add_ps(pv[2], pv[3])));
  *l = std::fma(*l, alpha, tsum);
  *m = m_new;
  const __m256 av = _mm256_set1_ps(alpha);
  // Output fma chains over the keys, 64 then 8 elements at a time: 8 independent chains hide
  // the fma latency; every element's operations are the same whichever chunk it falls in.
  int32_t d = 0;
  for (; d + 64 <= hd; d += 64) {
    __m256 a[8];
    #pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = _mm256_mul_ps(_mm256_loadu_ps(o + d + 8 * i), av);
    for (int32_t j = 0; j < jn; ++j) {
      const __m256 pj = _mm256_broadcast_ss(p + j);
      const float* vr = vt + size_t(j) * vre + d;
      #pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * i), a[i]);
    }
    #pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(o + d + 8 * i, a[i]);
  }
  for (; d + 32 <= hd; d += 32) {
    __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(o + d), av), a1 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 8), av);
    __m256 a2 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 16), av), a3 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 24), av);
    for (int32_t j = 0; j < jn; ++j) {
      const __m256 pj = _mm256_broadcast_ss(p + j);
      const float* vr = vt + size_t(j) * vre + d;
      a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr), a0);
      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8), a1);
      a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 16), a2);
      a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 24), a3);
    }
    _mm256_storeu_ps(o + d, a0);
    _mm256_storeu_ps(o + d + 8, a1);
    _mm256_storeu_ps(o + d + 16, a2);
    _mm256_storeu_ps(o + d + 24, a3);
  }
  for (; d + 8 <= hd; d += 8) {
    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(o + d), av);
    for (int32_t j = 0; j < jn; ++j) a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(vt + size_t(j) * vre + d), a);
    _mm256_storeu_ps(o + d, a);
  }
  for (; d < hd; ++d) {
    float x = o[d] * alpha;
    for (int32_t j = 0; j < jn; ++j) x = std::fma(p[j], vt[size_t(j) * vre + d], x);
    o[d] = x;
  }
}

template <DType KW>
void attn_group_impl(const AttnGroup& g) {
  constexpr bool kQuantK = KW == DType::Q8_0;  // stands for every quantized K type (Q8_0, Q4_0, Q8_KV)
  const int32_t hd = g.head_dim, nh = g.n_head, nq = g.n_tok * g.n_head, vre = g.v_row_elems, vd = g.v_dim;
  const AttnScratchLayout sl(hd, vre, nq);
  const int32_t hd_pad = sl.hd_pad;
  auto* kf = reinterpret_cast<float*>(g.scratch + sl.kf_off);
  auto* kq = reinterpret_cast<int8_t*>(g.scratch + sl.kq_off);
  auto* dk = reinterpret_cast<float*>(g.scratch + sl.dk_off);
  auto* vt = reinterpret_cast<float*>(g.scratch + sl.vt_off);
  auto* qq = reinterpret_cast<int8_t*>(g.scratch + sl.qq_off);
  auto* dq = reinterpret_cast<float*>(g.scratch + sl.dq_off);
  uint8_t* qconv = g.scratch + sl.qconv_off;
  auto* m = reinterpret_cast<float*>(g.scratch + sl.m_off);
  auto* l = reinterpret_cast<float*>(g.scratch + sl.l_off);
  auto* p = reinterpret_cast<float*>(g.scratch + sl.p_off);
  const int32_t n_sb = g.k_type == DType::Q8_KV ? 1 : hd_pad / kQK8_0;
  auto qrow = [&](int32_t qi) { return g.q + (qi / nh) * g.q_tok_stride + size_t(qi % nh) * hd; };
  auto orow = [&](int32_t qi) { return g.out + (qi / nh) * g.out_tok_stride + size_t(qi % nh) * vd; };

  int32_t max_vis = 0;
  for (int32_t t = 0; t < g.n_tok; ++t) max_vis = std::max(max_vis, g.n_vis[t]);
  const KernelSet& ks = *avx2_kernels();
  for (int32_t qi = 0; qi < nq; ++qi) {
    m[qi] = -std::numeric_limits<float>::infinity();
    l[qi] = 0.0f;
    std::fill_n(orow(qi), vd, 0.0f);
    if constexpr (kQuantK) {
      // This query alone, converted once by this kernel set's quantizer (as dot_row_q's callers do).
      int8_t* qi8 = qq + size_t(qi) * hd_pad;
      if (g.k_type == DType::Q8_KV) {
        ks.quantize_row_q8_kv(qrow(qi), qconv, hd);
        std::memcpy(&dq[qi], qconv, sizeof(float));
        std::memcpy(qi8, qconv + kQ8KvHeaderBytes, size_t(hd));
        std::memset(qi8 + hd, 0, size_t(hd_pad - hd));
      } else {
        ks.quantize_row_q8_0(qrow(qi), qconv, hd);
        const auto* b = reinterpret_cast<const BlockQ8_0*>(qconv);
        for (int32_t ib = 0; ib < n_sb; ++ib) {
          dq[size_t(qi) * n_sb + ib] = _cvtsh_ss(b[ib].d);
          std::memcpy(qi8 + ib * kQK8_0, b[ib].qs, kQK8_0);
        }
      }
    }
  }

  for (int32_t k0 = 0; k0 < max_vis; k0 += kT) {
    const int32_t kn = std::min(kT, max_vis - k0);
    if constexpr (kQuantK) load_k_quant(g, sl, k0, kn, kq, dk);
    else load_k_float<KW>(g, k0, kn, kf);
    for (int32_t j = 0; j < kn; ++j) load_v_row(g.v_type, g.v + size_t(g.cells[k0 + j]) * g.v_cell_bytes, vre, vt + size_t(j) * vre);
    const float* vals = vt + g.v_elem0;

    int32_t qi = 0;
    auto jn_of = [&](int32_t q) { return std::min(kn, g.n_vis[q / nh] - k0); };
    while (qi < nq) {
      if (jn_of(qi) <= 0) {
        ++qi;
        continue;
      }
      if constexpr (!kQuantK) {
        // Two queries share each K load; each lane's fma chain is the same as with one.
        if (qi + 1 < nq && jn_of(qi + 1) > 0) {
          const float* qs[2] = {qrow(qi), qrow(qi + 1)};
          __m256 s[2][4];
          scores_float<2>(kf, hd, qs, s);
          for (int n = 0; n < 2; ++n) softmax_update(s[n], jn_of(qi + n), g.scale, vals, vre, vd, p, &m[qi + n], &l[qi + n], orow(qi + n));
          qi += 2;
          continue;
        }
        const float* qs[1] = {qrow(qi)};
        __m256 s[1][4];
        scores_float<1>(kf, hd, qs, s);
        softmax_update(s[0], jn_of(qi), g.scale, vals, vre, vd, p, &m[qi], &l[qi], orow(qi));
      } else {
        __m256 s[4];
        scores_quant(kq, dk, qq + size_t(qi) * hd_pad, dq + size_t(qi) * n_sb, hd_pad, n_sb, s);
        softmax_update(s, jn_of(qi), g.scale, vals, vre, vd, p, &m[qi], &l[qi], orow(qi));
      }
      ++qi;
    }
  }

  for (int32_t qi = 0; qi < nq; ++qi) {
    const float inv = l[qi] > 0.0f ? 1.0f / l[qi] : 0.0f;
    float* o = orow(qi);
    const __m256 iv = _mm256_set1_ps(inv);
    int32_t d = 0;
    for (; d + 8 <= vd; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), iv));
    for (; d < vd; ++d) o[d] *= inv;
  }
}

}  // namespace

void attn_group_avx2(const AttnGroup& g) {
  switch (g.k_type) {
    case DType::F32: return attn_group_impl<DType::F32>(g);
    case DType::F16: return attn_group_impl<DType::F16>(g);
    case DType::BF16: return attn_group_impl<DType::BF16>(g);
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q8_KV: return attn_group_impl<DType::Q8_0>(g);
  }
}

}  // namespace kvstash
#endif
