// GGUF reader (versions 2 and 3): header, metadata, tensor directory over an mmap'd file.
// Owns: the mapping and the parsed directory. The file is untrusted: every count, length,
// offset, dimension and size is checked before use; errors name the key or tensor.
// Knows no architecture. Thread-safe after open (read-only).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "gguf/gguf_types.h"

namespace kvstash {

struct GgufTensorInfo {
  std::string name;
  uint32_t n_dims = 0;
  uint64_t ne[kGgufMaxDims] = {1, 1, 1, 1};  // ne[0] is the contiguous (innermost) dimension
  DType type = DType::F32;
  uint64_t offset = 0;       // relative to the data section
  uint64_t n_bytes = 0;      // validated against the file size
  const uint8_t* data = nullptr;  // points into the mapping

  uint64_t n_elems() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  uint64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  uint64_t row_bytes() const { return n_bytes / n_rows(); }
};

// Read-only bytes of a GGUF: an mmap'd file or a caller-owned buffer.
class GgufFile {
 public:
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  static Result<std::unique_ptr<GgufFile>> open(const std::string& path);
  // Parses `data` in place; the caller keeps it alive as long as the GgufFile.
  static Result<std::unique_ptr<GgufFile>> from_buffer(const uint8_t* data, size_t size);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }
  const uint8_t* bytes() const { return base_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;

  // Advice: the resident pages wholly inside [p, p + n) are no longer needed (their contents were
  // copied elsewhere). For an mmap'd file they are dropped and read again from the file if touched;
  // for a caller-owned buffer nothing happens. The bytes seen through bytes() never change.
  void release_pages(const uint8_t* p, size_t n) const;

  // Typed accessors: NotFound when missing, InvalidArgument naming the key on a type mismatch.
  Result<std::string> get_string(std::string_view key) const;
  Result<uint64_t> get_u64(std::string_view key) const;  // any non-negative integer type
  Result<double> get_f64(std::string_view key) const;    // any float or integer type
  Result<bool> get_bool(std::string_view key) const;
  Result<const GgufValue*> get_array(std::string_view key, GgufType elem) const;

 private:
  GgufFile() = default;
  Status parse();

  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  void* map_ = nullptr;  // non-null when we own an mmap
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace kvstash
