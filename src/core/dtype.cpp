#include "core/dtype.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "core/checked_math.h"

namespace kvstash {
namespace {

//                    type         name    block_elems block_bytes row_header quantized gguf_ok
constexpr DTypeTraits kTraits[] = {
    {DType::F32, "f32", 1, 4, 0, false, true},
    {DType::F16, "f16", 1, 2, 0, false, true},
    {DType::Q4_0, "q4_0", kQK4_0, sizeof(BlockQ4_0), 0, true, true},
    {DType::Q8_0, "q8_0", kQK8_0, sizeof(BlockQ8_0), 0, true, true},
    {DType::BF16, "bf16", 1, 2, 0, false, true},
    {DType::Q8_KV, "q8_KV", 1, sizeof(int8_t), kQ8KvHeaderBytes, true, false},
};

const DTypeTraits* find_traits(uint32_t id) {
  for (const auto& t : kTraits)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}

}  // namespace

const DTypeTraits* dtype_traits_by_id(uint32_t id) {
  const DTypeTraits* tr = find_traits(id);
  return tr && tr->gguf_ok ? tr : nullptr;
}

const DTypeTraits& dtype_traits(DType t) {
  const DTypeTraits* tr = find_traits(static_cast<uint32_t>(t));
  assert(tr && "dtype_traits: unknown DType");
  return *tr;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& t : kTraits)
    if (name == t.name) return t.type;
  return std::nullopt;
}

std::optional<uint64_t> dtype_row_bytes_checked(DType t, uint64_t n_elems) {
  const DTypeTraits* tr = find_traits(static_cast<uint32_t>(t));
  if (!tr || n_elems % tr->block_elems != 0) return std::nullopt;
  uint64_t bytes;
  if (!checked_mul(n_elems / tr->block_elems, tr->block_bytes, &bytes)) return std::nullopt;
  if (!checked_add(bytes, tr->row_header_bytes, &bytes)) return std::nullopt;
  return bytes;
}

size_t dtype_row_bytes(DType t, uint64_t n_elems) {
  auto b = dtype_row_bytes_checked(t, n_elems);
  assert(b && "dtype_row_bytes: n_elems not a multiple of the block size");
  return static_cast<size_t>(*b);
}

float fp16_to_fp32(fp16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      mant &= 0x3ff;
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

fp16_t fp32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t absx = x & 0x7fffffff;
  if (absx > 0x7f800000) return static_cast<fp16_t>(sign | 0x7e00 | ((absx >> 13) & 0x3ff));  // NaN
  if (absx >= 0x477ff000) return static_cast<fp16_t>(sign | 0x7c00);  // overflow -> inf (after rounding)
  if (absx < 0x38800000) {  // result is subnormal or zero
    if (absx < 0x33000000) return static_cast<fp16_t>(sign);  // < half of the smallest subnormal
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 + (113 - e) ... bits to drop
    uint32_t v = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (v & 1))) ++v;
    return static_cast<fp16_t>(sign | v);
  }
  uint32_t v = ((absx >> 13) - ((127 - 15) << 10));
  const uint32_t rem = absx & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (v & 1))) ++v;
  return static_cast<fp16_t>(sign | v);
}

bf16_t fp32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<bf16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<bf16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

namespace {

// float -> int8 for the quantizers, without undefined behaviour. Blocks of finite, normal values
// stay in range (ggml's results, bit for bit); an inf or NaN input, or a block so small that
// 1 / d overflows, pushes values out of range: those saturate, and NaN becomes 0 (what x86's
// truncating conversion gives ggml's (int8_t) cast).
int8_t to_int8_saturated(float v) {
  if (std::isnan(v)) return 0;
  return static_cast<int8_t>(std::fmin(127.0f, std::fmax(-128.0f, v)));
}

void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK8_0; ++i) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::fmax(amax, std::fabs(x[i * kQK8_0 + j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK8_0; ++j) y[i].qs[j] = to_int8_saturated(std::roundf(x[i * kQK8_0 + j] * id));
  }
}

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK4_0; ++i) {
    float amax = 0.0f, max = 0.0f;  // max keeps the sign of the largest-magnitude value
    for (int j = 0; j < kQK4_0; ++j) {
      const float v = x[i * kQK4_0 + j];
      if (amax < std::fabs(v)) {
        amax = std::fabs(v);
        max = v;
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const float x0 = x[i * kQK4_0 + j] * id;
      const float x1 = x[i * kQK4_0 + kQK4_0 / 2 + j] * id;
      const int xi0 = std::clamp(static_cast<int>(to_int8_saturated(x0 + 8.5f)), 0, 15);
      const int xi1 = std::clamp(static_cast<int>(to_int8_saturated(x1 + 8.5f)), 0, 15);
      y[i].qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

// One row, one scale: d = amax / 127 (float32), q = round(x / d) clamped to [-127, 127].
void quantize_q8_kv(const float* x, uint8_t* y, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  std::memcpy(y, &d, sizeof d);
  auto* q = reinterpret_cast<int8_t*>(y + kQ8KvHeaderBytes);
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(std::fmax(-127.0f, std::fmin(127.0f, std::roundf(x[i] * id))));
}

}  // namespace

void quantize_row_ref(DType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16: {
      auto* d = static_cast<fp16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<bf16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0: quantize_q8_0(src, static_cast<BlockQ8_0*>(dst), n); return;
    case DType::Q4_0: quantize_q4_0(src, static_cast<BlockQ4_0*>(dst), n); return;
    case DType::Q8_KV: quantize_q8_kv(src, static_cast<uint8_t*>(dst), n); return;
  }
}

void dequantize_row_ref(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16: {
      const auto* s = static_cast<const fp16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
      return;
    }
    case DType::BF16: {
      const auto* s = static_cast<const bf16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case DType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK8_0; ++j) dst[i * kQK8_0 + j] = b[i].qs[j] * d;
      }
      return;
    }
    case DType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          dst[i * kQK4_0 + j] = ((b[i].qs[j] & 0x0f) - 8) * d;
          dst[i * kQK4_0 + j + kQK4_0 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
        }
      }
      return;
    }
    case DType::Q8_KV: {
      float d;
      std::memcpy(&d, src, sizeof d);
      const auto* q = reinterpret_cast<const int8_t*>(static_cast<const uint8_t*>(src) + kQ8KvHeaderBytes);
      for (int64_t i = 0; i < n; ++i) dst[i] = q[i] * d;
      return;
    }
  }
}

}  // namespace kvstash
