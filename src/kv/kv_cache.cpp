#include "kv/kv_cache.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <limits>

namespace kvstash {

KvCache::KvCache(KvLayout layout) : layout_(std::move(layout)) {
  const uint32_t n = layout_.n_cells();
  data_.resize(layout_.n_layers());
  for (uint32_t il = 0; il < layout_.n_layers(); ++il) {
    for (const auto& s : layout_.layer(il).streams) {
      const size_t bytes = s.row_bytes * n;
      auto buf = std::unique_ptr<uint8_t[]>(new uint8_t[bytes]);
      std::memset(buf.get(), 0, bytes);
      data_[il].push_back(std::move(buf));
    }
  }
  pos_.assign(n, -1);
  tok_.assign(n, -1);
  seqs_.assign(n, 0);
}

void KvCache::cell_assign(uint32_t c, int32_t pos, SeqId seq, int32_t token) {
  assert(valid_seq_id(seq));
  cell_assign_seqs(c, pos, uint64_t(1) << seq, token);
}

void KvCache::cell_assign_seqs(uint32_t c, int32_t pos, uint64_t seqs, int32_t token) {
  assert(c < n_cells() && seqs_[c] == 0 && seqs != 0);
  pos_[c] = pos;
  tok_[c] = token;
  seqs_[c] = seqs;
  ++n_used_;
}

Status KvCache::find_free(uint32_t n, uint32_t* out) const {
  if (n > n_cells() - n_used_)
    return resource_exhausted("kv: need " + std::to_string(n) + " free cells, " + std::to_string(n_cells() - n_used_) +
                              " of " + std::to_string(n_cells()) + " are free");
  uint32_t k = 0;
  for (uint32_t c = 0; c < n_cells() && k < n; ++c)
    if (seqs_[c] == 0) out[k++] = c;
  assert(k == n);
  return Status::ok();
}

int64_t KvCache::find_cell(SeqId seq, int32_t pos) const {
  for (uint32_t c = 0; c < n_cells(); ++c)
    if (pos_[c] == pos && cell_has_seq(c, seq)) return c;
  return -1;
}

void KvCache::drop_seq_from_cell(uint32_t c, SeqId seq) {
  if (seqs_[c] == 0) return;
  if (seq < 0) seqs_[c] = 0;
  else seqs_[c] &= ~(uint64_t(1) << seq);
  if (seqs_[c] == 0) {
    pos_[c] = -1;
    --n_used_;
  }
}

void KvCache::seq_rm(SeqId seq, int32_t p0, int32_t p1) {
  if (p0 < 0) p0 = 0;
  if (p1 < 0) p1 = std::numeric_limits<int32_t>::max();
  for (uint32_t c = 0; c < n_cells(); ++c) {
    if (seqs_[c] == 0 || pos_[c] < p0 || pos_[c] >= p1) continue;
    if (seq >= 0 && !cell_has_seq(c, seq)) continue;
    drop_seq_from_cell(c, seq);
  }
}

void KvCache::seq_cp(SeqId src, SeqId dst, int32_t p0, int32_t p1) {
  if (src == dst) return;
  if (p0 < 0) p0 = 0;
  if (p1 < 0) p1 = std::numeric_limits<int32_t>::max();
  for (uint32_t c = 0; c < n_cells(); ++c)
    if (cell_has_seq(c, src) && pos_[c] >= p0 && pos_[c] < p1) seqs_[c] |= uint64_t(1) << dst;
}

void KvCache::seq_keep(SeqId seq) {
  for (uint32_t c = 0; c < n_cells(); ++c) {
    if (seqs_[c] == 0) continue;
    if (cell_has_seq(c, seq)) {
      seqs_[c] = uint64_t(1) << seq;
    } else {
      seqs_[c] = 0;
      pos_[c] = -1;
      --n_used_;
    }
  }
}

void KvCache::clear() {
  std::fill(pos_.begin(), pos_.end(), -1);
  std::fill(seqs_.begin(), seqs_.end(), 0);
  n_used_ = 0;
}

uint32_t KvCache::seq_n_cells(SeqId seq) const {
  uint32_t n = 0;
  for (uint32_t c = 0; c < n_cells(); ++c) n += cell_has_seq(c, seq);
  return n;
}

int32_t KvCache::seq_pos_max(SeqId seq) const {
  int32_t m = -1;
  for (uint32_t c = 0; c < n_cells(); ++c)
    if (cell_has_seq(c, seq)) m = std::max(m, pos_[c]);
  return m;
}

void KvCache::seq_cells_sorted(SeqId seq, std::vector<uint32_t>* cells) const {
  cells->clear();
  for (uint32_t c = 0; c < n_cells(); ++c)
    if (cell_has_seq(c, seq)) cells->push_back(c);
  std::sort(cells->begin(), cells->end(), [this](uint32_t a, uint32_t b) { return pos_[a] < pos_[b]; });
}

// ---- position shifts (seq_add) ----

void KvCache::seq_add(SeqId seq, int32_t p0, int32_t p1, int32_t delta) {
  assert(valid_seq_id(seq));
  if (p0 < 0) p0 = 0;
  if (p1 < 0) p1 = std::numeric_limits<int32_t>::max();
  if (delta == 0 || p0 >= p1) return;
  if (shift_.empty()) shift_.assign(n_cells(), 0);
  for (uint32_t c = 0; c < n_cells(); ++c) {
    if (!cell_has_seq(c, seq) || pos_[c] < p0 || pos_[c] >= p1) continue;
    const int64_t np = int64_t(pos_[c]) + delta;
    assert(np <= std::numeric_limits<int32_t>::max());
    if (np < 0) {  // shifted out of the window: the cell is freed for every sequence (llama.cpp)
      drop_seq_from_cell(c, -1);
      shift_[c] = 0;
      continue;
    }
    pos_[c] = static_cast<int32_t>(np);
    shift_[c] += delta;
    has_shift_ = true;
  }
}

void KvCache::shift_clear() {
  std::fill(shift_.begin(), shift_.end(), 0);
  has_shift_ = false;
}

}  // namespace kvstash
