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

// Where a stream's quantization scales live inside a row. Derived from the dtype by KvLayout::make,
// recorded so that readers of the buffer (attention, K-shift, state files) need not infer it.
enum class KvScaleLayout : uint8_t {
  None = 0,        // float types (f32, f16, bf16): no scales
  PerBlock32 = 1,  // q8_0, q4_0: an fp16 scale in front of every 32 elements of a group
  PerRow = 2,      // q8_KV: one float32 scale in front of every group (head row)
};
const char* kv_scale_layout_name(KvScaleLayout s);
KvScaleLayout kv_scale_layout_for(DType t);

// One token row = n_groups group (head) rows stored back to back; group g starts at
// g * group_bytes. A group is one dtype row of elems_per_row / n_groups elements, so
// row_bytes = n_groups * dtype_row_bytes(dtype, elems_per_row / n_groups).
struct KvRowSpec {
  KvStream stream = KvStream::K;
  DType dtype = DType::F16;
  uint32_t elems_per_row = 0;  // elements of one token row
  uint32_t n_groups = 1;       // rows split into groups (heads) of elems_per_row / n_groups
  KvRowOrder order = KvRowOrder::PerToken;
  KvScaleLayout scale_layout = KvScaleLayout::None;  // derived from dtype by KvLayout::make
  size_t group_bytes = 0;  // bytes of one group (head) row; computed once by KvLayout::make
  size_t row_bytes = 0;    // n_groups * group_bytes; computed once by KvLayout::make
  // MlaLatent only (0 for K and V): a group row holds two parts, in this order:
  //   [rope_elems]                 the RoPE'd key part (the only part a K-shift rotates)
  //   [group_elems - rope_elems]   the normalized latent (what attention sums values from)
  uint32_t rope_elems = 0;
  // Byte offset of the latent part inside a group row when the parts are separately addressable:
  // float types, and block types whose block divides rope_elems. 0 when they are not (q8_KV:
  // one scale covers the whole row, so readers dequantize and requantize whole rows).
  size_t latent_offset_bytes = 0;

  uint32_t group_elems() const { return elems_per_row / n_groups; }
  uint32_t latent_elems() const { return group_elems() - rope_elems; }
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
    uint32_t rope_elems = 0;  // MlaLatent: elements of the leading RoPE part of a group row
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
