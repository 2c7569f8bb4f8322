// Element types of weights and caches, their GGUF ids and block geometry.
// Owns: the one dtype_traits table and the one row-size function (dtype_row_bytes).
// Bits-per-weight and bandwidth figures derive from this table; nothing else types them in.
// Thread-safe: constant data and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kvstash {

// Values are ggml's type ids as stored in GGUF tensor infos.
enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  BF16 = 30,
};

struct DTypeTraits {
  DType type;
  const char* name;      // "f32", "q8_0", ... (llama.cpp's spelling)
  uint32_t block_elems;  // elements per block
  uint32_t block_bytes;  // bytes per block
  bool quantized;
};

// nullptr when `id` is not a type kvstash supports.
const DTypeTraits* dtype_traits_by_id(uint32_t id);
const DTypeTraits& dtype_traits(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
inline const char* dtype_name(DType t) { return dtype_traits(t).name; }

// THE row-size function: bytes of a row of n_elems elements of type t.
// Returns nullopt when n_elems is not a multiple of the block size or the size overflows.
std::optional<uint64_t> dtype_row_bytes_checked(DType t, uint64_t n_elems);
// Same, for sizes kvstash itself built (asserts on misuse).
size_t dtype_row_bytes(DType t, uint64_t n_elems);

// ---- block formats, bit-exact with ggml ----
using fp16_t = uint16_t;
using bf16_t = uint16_t;

constexpr int kQK4_0 = 32;
constexpr int kQK8_0 = 32;

struct BlockQ4_0 {
  fp16_t d;               // scale
  uint8_t qs[kQK4_0 / 2]; // nibbles: low = element j, high = element j + 16; value = nibble - 8
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes in ggml");

struct BlockQ8_0 {
  fp16_t d;            // scale
  int8_t qs[kQK8_0];   // value = qs * d
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes in ggml");

// ---- scalar conversions ----
float fp16_to_fp32(fp16_t h);
fp16_t fp32_to_fp16(float f);  // round to nearest even, like F16C
inline float bf16_to_fp32(bf16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
bf16_t fp32_to_bf16(float f);  // round to nearest even; NaN stays NaN (ggml's rule)

// ---- reference (scalar) row conversion; n must be a multiple of the block size ----
// `dst` holds dtype_row_bytes(t, n) bytes.
void quantize_row_ref(DType t, const float* src, void* dst, int64_t n);
void dequantize_row_ref(DType t, const void* src, float* dst, int64_t n);

}  // namespace kvstash
