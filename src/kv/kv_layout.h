// KvLayout: the single source of truth for the geometry of a KV cache.
// Owns: per layer, which streams are stored and each stream's element type, elements per
// token row, row bytes, row count and row order. Allocation, attention, memory accounting and
// (de)serialization all read it; nothing else computes a cache row size.
// Built by the architecture (src/model) from hyperparameters; immutable afterwards. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace kvstash {

enum class KvStream : uint8_t {
  K = 0,          // keys of all KV heads of a token: [n_head_kv, head_dim_k]
  V = 1,          // values of all KV heads of a token: [n_head_kv, head_dim_v]
  MlaLatent = 2,  // MLA: [n_rot + kv_lora_rank] per token
};
const char* kv_stream_name(KvStream s);

enum class KvRowOrder : uint8_t {
  PerToken = 0,    // row c holds cell c's values, contiguous
  Transposed = 1,  // element e of cell c at e * n_cells + c (reserved for attention paths that want it)
};

struct KvRowSpec {
  KvStream stream = KvStream::K;
  DType dtype = DType::F16;
  uint32_t elems_per_row = 0;  // elements of one token row
  uint32_t n_groups = 1;       // rows split into groups (heads) of elems_per_row / n_groups
  KvRowOrder order = KvRowOrder::PerToken;
  size_t row_bytes = 0;  // computed once by KvLayout::make from dtype and elems_per_row
};

struct KvLayerLayout {
  std::vector<KvRowSpec> streams;
};

class KvLayout {
 public:
  struct StreamRequest {
    KvStream stream;
    DType dtype;
    uint32_t elems_per_row;
    uint32_t n_groups;
  };
  // Returns an empty string on success, else why the request is impossible (for example an
  // element count that is not a multiple of the type's block size).
  static std::string make(uint32_t n_cells, const std::vector<std::vector<StreamRequest>>& layers, KvLayout* out);

  uint32_t n_cells() const { return n_cells_; }
  uint32_t n_layers() const { return static_cast<uint32_t>(layers_.size()); }
  const KvLayerLayout& layer(uint32_t il) const { return layers_[il]; }
  // nullptr if the layer lacks that stream.
  const KvRowSpec* find(uint32_t il, KvStream s) const;
  // Bytes of one cell across all layers and streams.
  size_t cell_bytes() const { return cell_bytes_; }
  // Bytes of the whole allocation (n_cells * cell_bytes).
  size_t total_bytes() const { return cell_bytes_ * n_cells_; }
  std::string describe() const;

 private:
  uint32_t n_cells_ = 0;
  std::vector<KvLayerLayout> layers_;
  size_t cell_bytes_ = 0;
};

}  // namespace kvstash
