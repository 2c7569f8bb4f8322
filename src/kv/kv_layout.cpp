#include "kv/kv_layout.h"

#include <cstdint>

#include "core/checked_math.h"

namespace kvstash {

const char* kv_stream_name(KvStream s) {
  switch (s) {
    case KvStream::K: return "K";
    case KvStream::V: return "V";
    case KvStream::MlaLatent: return "latent";
  }
  return "?";
}

const char* kv_scale_layout_name(KvScaleLayout s) {
  switch (s) {
    case KvScaleLayout::None: return "none";
    case KvScaleLayout::PerBlock32: return "per-block32";
    case KvScaleLayout::PerRow: return "per-row";
  }
  return "?";
}

KvScaleLayout kv_scale_layout_for(DType t) {
  static_assert(kQK8_0 == 32 && kQK4_0 == 32, "KvScaleLayout::PerBlock32 names the q8_0/q4_0 block size");
  switch (t) {
    case DType::F32:
    case DType::F16:
    case DType::BF16: return KvScaleLayout::None;
    case DType::Q8_0:
    case DType::Q4_0: return KvScaleLayout::PerBlock32;
    case DType::Q8_KV: return KvScaleLayout::PerRow;
  }
  return KvScaleLayout::None;
}

std::string KvLayout::make(uint32_t n_cells, const std::vector<std::vector<StreamRequest>>& layers, KvLayout* out) {
  KvLayout l;
  l.n_cells_ = n_cells;
  for (size_t il = 0; il < layers.size(); ++il) {
    KvLayerLayout ll;
    for (const auto& rq : layers[il]) {
      if (rq.elems_per_row == 0 || rq.n_groups == 0 || rq.elems_per_row % rq.n_groups != 0)
        return "layer " + std::to_string(il) + " " + kv_stream_name(rq.stream) + ": bad row shape";
      const uint32_t group = rq.elems_per_row / rq.n_groups;
      if (!dtype_row_bytes_checked(rq.dtype, group))
        return "layer " + std::to_string(il) + " " + kv_stream_name(rq.stream) + ": " + std::to_string(group) +
               " elements per head are not a multiple of the " + dtype_name(rq.dtype) + " block size " +
               std::to_string(dtype_traits(rq.dtype).block_elems);
      KvRowSpec s;
      s.stream = rq.stream;
      s.dtype = rq.dtype;
      s.elems_per_row = rq.elems_per_row;
      s.n_groups = rq.n_groups;
      s.scale_layout = kv_scale_layout_for(rq.dtype);
      s.group_bytes = dtype_row_bytes(rq.dtype, group);
      if (rq.rope_elems != 0) {
        if (rq.stream != KvStream::MlaLatent || rq.rope_elems >= group)
          return "layer " + std::to_string(il) + " " + kv_stream_name(rq.stream) + ": a RoPE part of " + std::to_string(rq.rope_elems) +
                 " elements needs an MLA latent row longer than that";
        s.rope_elems = rq.rope_elems;
        // The parts are separately addressable unless one scale spans the row (q8_KV), or a
        // quantization block straddles the boundary (then the whole row is one unit, like q8_KV).
        if (s.scale_layout != KvScaleLayout::PerRow && rq.rope_elems % dtype_traits(rq.dtype).block_elems == 0)
          s.latent_offset_bytes = dtype_row_bytes(rq.dtype, rq.rope_elems);
      }
      uint64_t row_bytes, cell_bytes, total_bytes;
      if (!checked_mul(rq.n_groups, s.group_bytes, &row_bytes) || !checked_add(l.cell_bytes_, row_bytes, &cell_bytes) ||
          !checked_mul(cell_bytes, n_cells, &total_bytes) || total_bytes > SIZE_MAX)
        return "layer " + std::to_string(il) + " " + kv_stream_name(rq.stream) + ": cache size of " + std::to_string(n_cells) +
               " cells overflows";
      s.row_bytes = static_cast<size_t>(row_bytes);
      l.cell_bytes_ = static_cast<size_t>(cell_bytes);
      ll.streams.push_back(s);
    }
    l.layers_.push_back(std::move(ll));
  }
  *out = std::move(l);
  return {};
}

const KvRowSpec* KvLayout::find(uint32_t il, KvStream s) const {
  if (il >= layers_.size()) return nullptr;
  for (const auto& r : layers_[il].streams)
    if (r.stream == s) return &r;
  return nullptr;
}

std::string KvLayout::describe() const {
  std::string out = std::to_string(n_cells_) + " cells, " + std::to_string(layers_.size()) + " layers";
  if (!layers_.empty()) {
    for (const auto& s : layers_[0].streams)
      out += std::string(", ") + kv_stream_name(s.stream) + " " + dtype_name(s.dtype) + "[" + std::to_string(s.n_groups) + " x " +
             std::to_string(s.group_elems()) + "]" +
             (s.rope_elems ? " (rope " + std::to_string(s.rope_elems) + " + latent " + std::to_string(s.latent_elems()) + ")" : "") + " " +
             std::to_string(s.row_bytes) + " B" +
             (s.scale_layout == KvScaleLayout::None ? "" : std::string(" scales ") + kv_scale_layout_name(s.scale_layout));
  }
  return out;
}

}  // namespace kvstash
