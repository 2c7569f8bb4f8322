// AVX2/FMA/F16C helpers shared by the kernels compiled for them (kernels_avx2.cpp,
// attention_avx2.cpp). Include only from files built with -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "core/dtype.h"

namespace kvstash::simd {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 consecutive values of an F32, F16 or BF16 row from element i, as floats.
template <DType W>
inline __m256 load8(const void* row, int64_t i) {
  if constexpr (W == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  } else if constexpr (W == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const fp16_t*>(row) + i)));
  } else {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const bf16_t*>(row) + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
}

template <DType W>
inline float load1(const void* row, int64_t i) {
  if constexpr (W == DType::F32) return static_cast<const float*>(row)[i];
  else if constexpr (W == DType::F16) return _cvtsh_ss(static_cast<const fp16_t*>(row)[i]);
  else return bf16_to_fp32(static_cast<const bf16_t*>(row)[i]);
}

}  // namespace kvstash::simd
