// AVX2/FMA/F16C kernels. Compiled with -mavx2 -mfma -mf16c; used only when the CPU has them.
// Row-major weights: every output element is one accumulator (8 float lanes) fed blocks in order,
// then reduced by hsum() in a fixed pattern; Interleaved8 weights: one lane of an 8-row accumulator
// per element (tile_il8). Tiling (rows x tokens) never changes a result (batch invariance).
#include "core/kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/simd_avx2.h"

namespace kvstash {
namespace {

using simd::hsum;
using simd::load1;
using simd::load8;

inline float h2f(fp16_t h) { return _cvtsh_ss(h); }

inline __m256 mul_sum_i8(__m256i x, __m256i y) {
  const __m256i ax = _mm256_sign_epi8(x, x);
  const __m256i sy = _mm256_sign_epi8(y, x);
  const __m256i dot16 = _mm256_maddubs_epi16(ax, sy);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(dot16, _mm256_set1_epi16(1)));
}

// Q4_0 nibbles as unsigned bytes 0..15 (the -8 offset is applied by the caller).
inline __m256i q4_unpack_u(const uint8_t* qs) {
  const __m128i tmp = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
  return _mm256_and_si256(bytes, _mm256_set1_epi8(0x0f));
}

// Q4_0 nibbles as signed values -8..7.
inline __m256i q4_unpack(const uint8_t* qs) { return _mm256_sub_epi8(q4_unpack_u(qs), _mm256_set1_epi8(8)); }

// Per 4-byte lane: sum of u*x (u unsigned, x signed), as int32. Exact: |u*x| <= 15*128.
inline __m256i dot_u8_i8_lanes(__m256i u, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

// ---- quantized tiles: R weight rows x T activation rows ----
template <bool kQ4, int R, int T>
void tile_quant(const uint8_t* w, size_t wrb, const uint8_t* x, size_t xrb, int64_t nb, float* y, int64_t ldy) {
  __m256 acc[R][T];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i xv[T];
    __m256i xs8[T];  // Q4_0 only: 8 * (sum of x) per 4-byte lane, shared by all R rows
    float dx[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const auto* xb = reinterpret_cast<const BlockQ8_0*>(x + t * xrb) + b;
      xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb->qs));
      dx[t] = h2f(xb->d);
      if constexpr (kQ4) xs8[t] = dot_u8_i8_lanes(_mm256_set1_epi8(8), xv[t]);
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if constexpr (kQ4) {
        // sum (u - 8) * x = sum u * x - 8 * sum x, lane by lane in exact int32: the same lane
        // values as a signed product, so the float accumulation is unchanged.
        const auto* wb = reinterpret_cast<const BlockQ4_0*>(w + r * wrb) + b;
        const __m256i wu = q4_unpack_u(wb->qs);
        const float dw = h2f(wb->d);
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i lanes = _mm256_sub_epi32(dot_u8_i8_lanes(wu, xv[t]), xs8[t]);
          acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx[t]), _mm256_cvtepi32_ps(lanes), acc[r][t]);
        }
      } else {
        const auto* wb = reinterpret_cast<const BlockQ8_0*>(w + r * wrb) + b;
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb->qs));
        const float dw = h2f(wb->d);
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx[t]), mul_sum_i8(wv, xv[t]), acc[r][t]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[r][t]);
}

// ---- Interleaved8 quantized tiles: one 8-row group x T activation rows ----
// Per block and token: the 8 rows' exact int32 block sums in one vector (lane j = row j), then
// acc = fma(float(sums), dw * dx, acc). Lane j performs exactly the scalar gemm_il8 sequence for
// row j, whatever T, the group's neighbours or the thread: the result is batch invariant.
inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
}

// Per activation row and block, computed once per (row block, token tile) instead of once per
// 8-row group: the fp32 scale dx and, for Q4_0, 8 x (sum of the row's quants), the exact integer
// correction of its -8 offset. Same values as computing them inline: no result changes.
struct Il8Acts {
  const float* dx;    // [T][nb]
  const int32_t* s8;  // [T][nb], Q4_0 only
};

template <bool kQ4>
void prep_il8(const uint8_t* x, size_t xrb, int64_t nb, int n_t, float* dx, int32_t* s8) {
  for (int t = 0; t < n_t; ++t) {
    const BlockQ8_0* xb = reinterpret_cast<const BlockQ8_0*>(x + t * xrb);
    for (int64_t b = 0; b < nb; ++b) {
      dx[t * nb + b] = h2f(xb[b].d);
      if constexpr (kQ4) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb[b].qs));
        const __m256i xs = dot_u8_i8_lanes(_mm256_set1_epi8(8), xv);  // 8 * sum x, per 4-byte lane
        const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(xs), _mm256_extracti128_si256(xs, 1));
        const __m128i q = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
        s8[t * nb + b] = _mm_cvtsi128_si32(_mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1)));
      }
    }
  }
}

template <bool kQ4, int T>
void tile_il8(const uint8_t* wg, size_t bstride, const uint8_t* x, size_t xrb, Il8Acts pre, int64_t nb, float* y, int64_t ldy, int j0, int j1) {
  static_assert(Interleaved8Geom::chunk(1, 0) - Interleaved8Geom::chunk(0, 0) == 32, "one chunk of 8 rows is one 256-bit load");
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256 acc[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = wg + b * bstride;
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
    const __m256i* q = reinterpret_cast<const __m256i*>(blk + Interleaved8Geom::chunk(0, 0));  // chunk c: q[c]
    const BlockQ8_0* xb[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const BlockQ8_0*>(x + t * xrb) + b;
    __m256i sum[T];
    if constexpr (kQ4) {
      // u * x with u = nibble in 0..15: |u0 x0 + u1 x1| <= 3840 per int16 lane, so the 8 products
      // of a block add up exactly in int16 (<= 30720); then sum (u - 8) x = sum u x - 8 sum x.
      const __m256i m4 = _mm256_set1_epi8(0x0f);
      __m256i s16[T];
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) s16[t] = _mm256_setzero_si256();
      #pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256(q + c);
        const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(lo, bcast4(xb[t]->qs + 4 * c)));
          s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(hi, bcast4(xb[t]->qs + 16 + 4 * c)));
        }
      }
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) sum[t] = _mm256_sub_epi32(_mm256_madd_epi16(s16[t], ones16), _mm256_set1_epi32(pre.s8[t * nb + b]));
    } else {
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) sum[t] = _mm256_setzero_si256();
      #pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        const __m256i wv = _mm256_loadu_si256(q + c);
        const __m256i aw = _mm256_sign_epi8(wv, wv);
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(bcast4(xb[t]->qs + 4 * c), wv));
          sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(p16, ones16));
        }
      }
    }
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]), _mm256_mul_ps(dw, _mm256_broadcast_ss(pre.dx + t * nb + b)), acc[t]);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    if (j0 == 0 && j1 == kInterleaveRows) {
      _mm256_storeu_ps(y + t * ldy, acc[t]);
    } else {
      alignas(32) float tmp[kInterleaveRows];
      _mm256_store_ps(tmp, acc[t]);
      for (int j = j0; j < j1; ++j) y[t * ldy + j] = tmp[j];
    }
  }
}

// ---- float tiles (F32, F16, BF16 weights; F32 activations) ----
// Decode (T = 1) over F16/BF16 rows: R row streams per thread outrun the hardware prefetcher;
// each row's line kPrefetchBytes ahead is requested once per 64-byte line (docs/performance.md:
// ~+35 % single-thread F16 decode). Prefetches change no arithmetic.
constexpr int64_t kPrefetchBytes = 1024;

template <DType W, int R, int T>
void tile_float(const uint8_t* w, size_t wrb, const uint8_t* x, size_t xrb, int64_t n, float* y, int64_t ldy) {
  __m256 acc[R][T];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const int64_t n8 = n & ~int64_t(7);
  for (int64_t i = 0; i < n8; i += 8) {
    __m256 xv[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(reinterpret_cast<const float*>(x + t * xrb) + i);
    if constexpr (T == 1 && W != DType::F32) {
      if ((i & 31) == 0) {  // once per 64-byte line of each 16-bit row
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * wrb + i * 2 + kPrefetchBytes), _MM_HINT_T0);
      }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8<W>(w + r * wrb, i);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[r][t]);
      const float* xt = reinterpret_cast<const float*>(x + t * xrb);
      for (int64_t i = n8; i < n; ++i) s += load1<W>(w + r * wrb, i) * xt[i];
      y[t * ldy + r] = s;
    }
}

// ---- driver: cache-blocked loops over row blocks, token tiles, row tiles ----
constexpr int kTileR = 4;
constexpr int kTileRDecode = 8;
constexpr int kTileT = 2;
constexpr int64_t kRowBlock = 64;

template <int R, int T, typename Kind>
void call_tile(const MatRef& w, int64_t r, const uint8_t* x, size_t xrb, int64_t t, float* y, int64_t ldy) {
  const uint8_t* wr = w.data + r * w.row_bytes;
  const uint8_t* xt = x + t * xrb;
  float* yo = y + t * ldy + r;
  if constexpr (Kind::kQuant) {
    tile_quant<Kind::kQ4, R, T>(wr, w.row_bytes, xt, xrb, w.n_cols / 32, yo, ldy);
  } else {
    tile_float<Kind::kW, R, T>(wr, w.row_bytes, xt, xrb, w.n_cols, yo, ldy);
  }
}

template <int R, typename Kind>
void tile_row_group(const MatRef& w, int64_t r, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy) {
  int64_t t = 0;
  for (; t + kTileT <= n_tok; t += kTileT) call_tile<R, kTileT, Kind>(w, r, x, xrb, t, y, ldy);
  for (; t < n_tok; ++t) call_tile<R, 1, Kind>(w, r, x, xrb, t, y, ldy);
}

// Interleaved8: row blocks of kRowBlock rows (8 groups) stay in cache while token tiles of 4
// sweep them; a partial group (r0 or r1 inside a group) computes the whole group, stores its rows.
constexpr int kTileTIl8 = 4;
template <bool kQ4>
void gemm_il8(const MatRef& w, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  static_assert(kRowBlock % kInterleaveRows == 0);
  const Interleaved8Geom geo = interleaved8_geom(w.type, w.row_bytes);
  const int64_t nb = w.n_cols / kQK8_0;
  // Per-thread scratch for one token tile's Il8Acts: grows to the widest matrix once, then is
  // reused (no allocation in steady-state decode).
  thread_local std::vector<float> dx;
  thread_local std::vector<int32_t> s8;
  if (dx.size() < size_t(nb) * kTileTIl8) {
    dx.resize(size_t(nb) * kTileTIl8);
    s8.resize(size_t(nb) * kTileTIl8);
  }
  const Il8Acts pre{dx.data(), s8.data()};
  // Decode (one token tile): the activations' block values are prepared once for all row blocks.
  const bool one_tile = n_tok <= kTileTIl8;
  if (one_tile) prep_il8<kQ4>(x, xrb, nb, static_cast<int>(n_tok), dx.data(), s8.data());
  const int64_t g_end = (r1 + kInterleaveRows - 1) / kInterleaveRows;
  for (int64_t gb = r0 / kInterleaveRows; gb < g_end; gb += kRowBlock / kInterleaveRows) {
    const int64_t ge = std::min(g_end, gb + kRowBlock / kInterleaveRows);
    auto groups = [&]<int T>(int64_t t, Il8Acts p) {
      for (int64_t g = gb; g < ge; ++g) {
        const int64_t rg = g * kInterleaveRows;
        const int j0 = static_cast<int>(std::max<int64_t>(r0 - rg, 0)), j1 = static_cast<int>(std::min<int64_t>(r1 - rg, kInterleaveRows));
        tile_il8<kQ4, T>(w.data + geo.block(g, 0), geo.block_stride(), x + t * xrb, xrb, p, nb, y + t * ldy + rg, ldy, j0, j1);
      }
    };
    int64_t t = 0;
    for (; t + kTileTIl8 <= n_tok; t += kTileTIl8) {
      if (!one_tile) prep_il8<kQ4>(x + t * xrb, xrb, nb, kTileTIl8, dx.data(), s8.data());
      groups.template operator()<kTileTIl8>(t, pre);
    }
    for (; t < n_tok; ++t) {  // the tail, one token at a time: its values sit at row (t - t_tail) of the tile
      const int64_t i = one_tile ? t : 0;
      if (!one_tile) prep_il8<kQ4>(x + t * xrb, xrb, nb, 1, dx.data(), s8.data());
      groups.template operator()<1>(t, Il8Acts{dx.data() + i * nb, s8.data() + i * nb});
    }
  }
}

template <typename Kind>
void gemm(const MatRef& w, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (Kind::kQuant) {
    if (w.layout == WeightLayout::Interleaved8) return gemm_il8<Kind::kQ4>(w, x, xrb, n_tok, y, ldy, r0, r1);
  }
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = std::min(r1, rb + kRowBlock);
    int64_t r = rb;
    // One token (decode): 8 rows per tile, 8 independent FMA chains instead of 4, so the loop is
    // bound by FMA throughput rather than latency. An output's arithmetic does not depend on the
    // tile it is in, so this changes no result.
    if (n_tok == 1)
      for (; r + kTileRDecode <= re; r += kTileRDecode) call_tile<kTileRDecode, 1, Kind>(w, r, x, xrb, 0, y, ldy);
    for (; r + kTileR <= re; r += kTileR) tile_row_group<kTileR, Kind>(w, r, x, xrb, n_tok, y, ldy);
    for (; r < re; ++r) tile_row_group<1, Kind>(w, r, x, xrb, n_tok, y, ldy);
  }
}

// kW (the weight dtype) is read by the float path only; quantized kinds pick their block by kQ4.
struct KindQ8 { static constexpr bool kQuant = true, kQ4 = false; };
struct KindQ4 { static constexpr bool kQuant = true, kQ4 = true; };
template <DType D>
struct KindF { static constexpr bool kQuant = false, kQ4 = false; static constexpr DType kW = D; };

void quantize_q8_0(const float* x, void* yv, int64_t n) {
  auto* y = static_cast<BlockQ8_0*>(yv);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / kQK8_0; ++i) {
    const float* xb = x + i * kQK8_0;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[j]));
    }
    __m128 m = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float maxv = _mm_cvtss_f32(m);
    const float d = maxv / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    const __m256 mul = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j)
      q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // pack 4 x 8 int32 -> 32 int8 in order
    __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs), p);
  }
}

float dot_row(DType t, const void* row, const float* x, int64_t n) {
  float out;
  const auto* xb = reinterpret_cast<const uint8_t*>(x);
  const auto* wb = static_cast<const uint8_t*>(row);
  if (t == DType::F16) tile_float<DType::F16, 1, 1>(wb, 0, xb, 0, n, &out, 0);
  else if (t == DType::BF16) tile_float<DType::BF16, 1, 1>(wb, 0, xb, 0, n, &out, 0);
  else tile_float<DType::F32, 1, 1>(wb, 0, xb, 0, n, &out, 0);
  return out;
}

template <DType W>
void axpy_float(const void* row, float a, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  const int64_t n8 = n & ~int64_t(7);
  int64_t i = 0;
  for (; i < n8; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load8<W>(row, i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * load1<W>(row, i);
}

// y[0..8) += ad * q[0..8) for 8 int8 values held in the low 8 bytes of q8.
inline void axpy8_i8(__m256 ad, __m128i q8, float* y) {
  const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
  _mm256_storeu_ps(y, _mm256_fmadd_ps(ad, q, _mm256_loadu_ps(y)));
}

// 32 int8 values (one block) scaled by ad into y[0..32).
inline void axpy32_i8(__m256 ad, __m256i q, float* y) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  axpy8_i8(ad, lo, y);
  axpy8_i8(ad, _mm_srli_si128(lo, 8), y + 8);
  axpy8_i8(ad, hi, y + 16);
  axpy8_i8(ad, _mm_srli_si128(hi, 8), y + 24);
}

void axpy_row(DType t, const void* row, float a, float* y, int64_t n) {
  switch (t) {
    case DType::F32: axpy_float<DType::F32>(row, a, y, n); return;
    case DType::F16: axpy_float<DType::F16>(row, a, y, n); return;
    case DType::BF16: axpy_float<DType::BF16>(row, a, y, n); return;
    case DType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(row);
      for (int64_t ib = 0; ib < n / kQK8_0; ++ib)
        axpy32_i8(_mm256_set1_ps(a * h2f(b[ib].d)), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[ib].qs)), y + ib * kQK8_0);
      return;
    }
    case DType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(row);
      for (int64_t ib = 0; ib < n / kQK4_0; ++ib) axpy32_i8(_mm256_set1_ps(a * h2f(b[ib].d)), q4_unpack(b[ib].qs), y + ib * kQK4_0);
      return;
    }
    case DType::Q8_KV: {
      float d;
      std::memcpy(&d, row, sizeof d);
      const float ad = a * d;
      const auto* q = reinterpret_cast<const int8_t*>(static_cast<const uint8_t*>(row) + kQ8KvHeaderBytes);
      const __m256 adv = _mm256_set1_ps(ad);
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) axpy8_i8(adv, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)), y + i);
      for (; i < n; ++i) y[i] += ad * static_cast<float>(q[i]);
      return;
    }
  }
}

// Exact int32 dot of two int8 vectors of n elements (|values| <= 127, so maddubs cannot saturate).
inline int32_t dot_i8(const int8_t* x, const int8_t* y, int64_t n) {
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i yv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i));
    const __m256i dot16 = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(yv, xv));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(dot16, _mm256_set1_epi16(1)));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  int32_t r = _mm_cvtsi128_si32(s);
  for (; i < n; ++i) r += static_cast<int32_t>(x[i]) * y[i];
  return r;
}

float dot_row_q(DType t, const void* krow, const void* qrow, int64_t n) {
  const auto* kb = static_cast<const uint8_t*>(krow);
  const auto* qb = static_cast<const uint8_t*>(qrow);
  float out = NAN;  // float rows use dot_row
  switch (t) {
    case DType::Q8_0: tile_quant<false, 1, 1>(kb, 0, qb, 0, n / kQK8_0, &out, 0); break;
    case DType::Q4_0: tile_quant<true, 1, 1>(kb, 0, qb, 0, n / kQK4_0, &out, 0); break;
    case DType::Q8_KV: {
      float dk, dq;
      std::memcpy(&dk, kb, sizeof dk);
      std::memcpy(&dq, qb, sizeof dq);
      const int32_t s = dot_i8(reinterpret_cast<const int8_t*>(kb + kQ8KvHeaderBytes), reinterpret_cast<const int8_t*>(qb + kQ8KvHeaderBytes), n);
      out = static_cast<float>(s) * (dk * dq);  // exact integer sum: bit-identical to the scalar kernel
      break;
    }
    case DType::F32:
    case DType::F16:
    case DType::BF16: break;
  }
  return out;
}

// One Q8_KV row: d = amax / 127, q = x * (1 / d) rounded to nearest even (like quantize_q8_0 here;
// the reference rounds halves away from zero, so single values may differ by 1).
void quantize_q8_kv(const float* x, void* yv, int64_t n) {
  auto* y = static_cast<uint8_t*>(yv);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  __m256 amax8 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + i)));
  __m128 m = _mm_max_ps(_mm256_extractf128_ps(amax8, 1), _mm256_castps256_ps128(amax8));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  float amax = _mm_cvtss_f32(m);
  for (; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  std::memcpy(y, &d, sizeof d);
  auto* q = reinterpret_cast<int8_t*>(y + kQ8KvHeaderBytes);
  const __m256 mul = _mm256_set1_ps(id), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i v[4];
    for (int j = 0; j < 4; ++j) {
      // Clamped to [-127, 127] before conversion (as the reference): dot_i8 relies on it.
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
    }
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), p);
  }
  for (; i < n; ++i) q[i] = static_cast<int8_t>(std::fmax(-127.0f, std::fmin(127.0f, std::nearbyint(x[i] * id))));
}

void store_row(DType t, const float* x, void* row, int64_t n) {
  if (t == DType::F16) {
    auto* o = static_cast<fp16_t*>(row);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) o[i] = fp32_to_fp16(x[i]);
    return;
  }
  quantize_row_ref(t, x, row, n);
}

const KernelSet kAvx2 = {
    "avx2", gemm<KindF<DType::F32>>, gemm<KindF<DType::F16>>, gemm<KindF<DType::BF16>>, gemm<KindQ8>, gemm<KindQ4>,
    quantize_q8_0, dot_row, axpy_row, store_row, quantize_q8_kv, dot_row_q, attn_group_avx2,
};

// F16C is CPUID leaf 1, ECX bit 29: clang 14's __builtin_cpu_supports does not know "f16c".
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}

}  // namespace

const KernelSet* avx2_kernels() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  return ok ? &kAvx2 : nullptr;
}

}  // namespace kvstash

#else
namespace kvstash {
const KernelSet* avx2_kernels() { return nullptr; }
}  // namespace kvstash
#endif
