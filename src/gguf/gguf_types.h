// GGUF metadata value model, shared by the reader and the writer.
// Owns: the GGUF value type ids and the in-memory value tree. Knows no architecture.
// Thread-safe: values only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvstash {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr uint32_t kGgufDefaultAlignment = 32;
constexpr uint32_t kGgufMaxDims = 4;

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};

const char* gguf_type_name(GgufType t);
// Bytes of a fixed-size scalar type; 0 for STRING and ARRAY or unknown ids.
uint32_t gguf_scalar_bytes(GgufType t);

// One metadata value. Scalars are widened into u/i/f; arrays of scalars keep their raw
// little-endian bytes; arrays of strings and nested arrays hold decoded items.
struct GgufValue {
  GgufType type = GgufType::U8;
  uint64_t u = 0;   // unsigned integer types and BOOL
  int64_t i = 0;    // signed integer types
  double f = 0;     // F32 / F64
  std::string str;  // STRING

  GgufType elem_type = GgufType::U8;  // ARRAY only
  uint64_t n_elems = 0;               // ARRAY only
  std::vector<uint8_t> raw;           // ARRAY of scalars: n_elems * gguf_scalar_bytes(elem_type)
  std::vector<std::string> strs;      // ARRAY of STRING
  std::vector<GgufValue> items;       // ARRAY of ARRAY

  bool is_integer() const;
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }
  // Scalar array element as double / int64 (caller checks the index and elem_type).
  double array_f64(uint64_t idx) const;
  int64_t array_i64(uint64_t idx) const;
  std::string to_display(size_t max_items = 8) const;
};

}  // namespace kvstash
