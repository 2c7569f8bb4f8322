// GGUF writer (version 3) for tests and the model generator.
// Owns: a list of metadata and tensor descriptions; tensor bytes are produced on demand by
// callbacks so multi-GB models stream to disk one tensor at a time. Not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "gguf/gguf_types.h"

namespace kvstash {

class GgufWriter {
 public:
  // Fills `dst` (exactly the tensor's byte size) with the tensor's data.
  using FillFn = std::function<void(uint8_t* dst, uint64_t n_bytes)>;

  void set_alignment(uint32_t a);  // power of two; also written as general.alignment
  void add_value(const std::string& key, GgufValue v);
  void add_string(const std::string& key, const std::string& s);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);

  // dims: innermost first (ne[0] contiguous), like GGUF.
  void add_tensor(const std::string& name, DType type, std::vector<uint64_t> dims, FillFn fill);

  // Writes atomically enough for tests: to `path`.tmp, then rename.
  Status write_file(const std::string& path) const;
  // Serializes the header (metadata + tensor infos + padding) only.
  std::vector<uint8_t> header_bytes() const;
  // Whole file in memory (small models and tests).
  std::vector<uint8_t> to_bytes() const;

 private:
  struct Tensor {
    std::string name;
    DType type;
    std::vector<uint64_t> dims;
    uint64_t n_bytes;
    uint64_t offset;
    FillFn fill;
  };
  uint32_t alignment_ = kGgufDefaultAlignment;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
  uint64_t data_bytes_ = 0;
};

// Encodes one metadata value (type tag not included) onto `out`.
void gguf_encode_value(const GgufValue& v, std::vector<uint8_t>& out);

}  // namespace kvstash
