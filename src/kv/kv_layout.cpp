#include "kv/kv_layout.h"

namespace kvstash {

const char* kv_stream_name(KvStream s) {
  switch (s) {
    case KvStream::K: return "K";
    case KvStream::V: return "V";
    case KvStream::MlaLatent: return "latent";
  }
  return "?";
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
      s.row_bytes = dtype_row_bytes(rq.dtype, rq.elems_per_row);
      l.cell_bytes_ += s.row_bytes;
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
      out += std::string(", ") + kv_stream_name(s.stream) + " " + dtype_name(s.dtype) + "[" + std::to_string(s.elems_per_row) + "]";
  }
  return out;
}

}  // namespace kvstash
