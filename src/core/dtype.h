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

// Values below 1000 are ggml's type ids as stored in GGUF tensor infos. Internal types (cache
// formats that never appear in a GGUF file) take ids from kFirstInternalTypeId upwards.
constexpr uint32_t kFirstInternalTypeId = 1000;
enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  BF16 = 30,
  // Internal: int8 with one float32 scale per row (ik_llama.cpp's q8_KV). A row of n elements is
  // 4 + n bytes: float32 d, then n int8 q; value = d * q. Used for KV cache head rows and for the
  // queries that multiply them. Never read from or written to a GGUF file.
  Q8_KV = kFirstInternalTypeId,
};

struct DTypeTraits {
  DType type;
  const char* name;           // "f32", "q8_0", ... (llama.cpp's spelling; "q8_KV" as ik_llama.cpp)
  uint32_t block_elems;       // elements per block
  uint32_t block_bytes;       // bytes per block
  uint32_t row_header_bytes;  // bytes before the first block of every row (q8_KV: the float32 scale)
  bool quantized;
  bool gguf_ok;               // may appear as a GGUF tensor type
};

// GGUF tensor types only: nullptr when `id` is not a ggml type id kvstash reads from files.
// Internal types such as Q8_KV are refused here on purpose (a file cannot claim them).
const DTypeTraits* dtype_traits_by_id(uint32_t id);
// Every type, internal ones included.
const DTypeTraits& dtype_traits(DType t);
// Every type, internal ones included (cache types come from the command line by name).
std::optional<DType> dtype_from_name(std::string_view name);
inline const char* dtype_name(DType t) { return dtype_traits(t).name; }

// THE row-size function: bytes of a row of n_elems elements of type t:
// row_header_bytes + (n_elems / block_elems) * block_bytes. For Q8_KV a row is one scaled row
// (in the KV cache: one head row), so n_elems = 64 gives 4 + 64 bytes.
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

// Q8_KV row header: the row's float32 scale. Read and written with memcpy: rows of n elements
// are 4 + n bytes, so a row need not be 4-byte aligned.
constexpr uint32_t kQ8KvHeaderBytes = sizeof(float);
static_assert(kQ8KvHeaderBytes == 4, "q8_KV rows start with a float32 scale");

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
// `dst` holds dtype_row_bytes(t, n) bytes. Q8_KV: the n elements share one scale,
// d = amax / 127, q = round(x / d) (computed as x * (1 / d), halves away from zero, like Q8_0).
void quantize_row_ref(DType t, const float* src, void* dst, int64_t n);
void dequantize_row_ref(DType t, const void* src, float* dst, int64_t n);

}  // namespace kvstash
