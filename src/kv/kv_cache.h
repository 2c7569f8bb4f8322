// KvCache: n_cells cells shared by up to kMaxSeqs sequences, with storage laid out by a KvLayout.
// Owns: the cache memory and the cell bookkeeping (position and sequence set per cell).
// Never computes a row size itself: all geometry comes from the KvLayout.
// Not thread-safe: the engine serialises access (kernels may read rows concurrently).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "kv/kv_layout.h"

namespace kvstash {

using SeqId = int32_t;

class KvCache {
 public:
  static constexpr int kMaxSeqs = 64;

  explicit KvCache(KvLayout layout);

  const KvLayout& layout() const { return layout_; }
  uint32_t n_cells() const { return layout_.n_cells(); }

  // Row of `cell` in stream `si` (index into layout().layer(il).streams) of layer il. A stream's
  // rows are stored back to back: row(il, si, c) == row(il, si, 0) + c * row_bytes (attention
  // addresses cells from row 0).
  uint8_t* row(uint32_t il, uint32_t si, uint32_t cell) {
    return data_[il][si].get() + static_cast<size_t>(cell) * layout_.layer(il).streams[si].row_bytes;
  }
  const uint8_t* row(uint32_t il, uint32_t si, uint32_t cell) const {
    return data_[il][si].get() + static_cast<size_t>(cell) * layout_.layer(il).streams[si].row_bytes;
  }

  // ---- cells ----
  bool cell_empty(uint32_t c) const { return seqs_[c] == 0; }
  int32_t cell_pos(uint32_t c) const { return pos_[c]; }
  bool cell_has_seq(uint32_t c, SeqId s) const { return (seqs_[c] >> s) & 1u; }
  uint64_t cell_seqs(uint32_t c) const { return seqs_[c]; }
  int32_t cell_token(uint32_t c) const { return tok_[c]; }  // -1 when unknown
  // Sets cell c to hold (pos, seq) for `token`; the cell must be empty.
  void cell_assign(uint32_t c, int32_t pos, SeqId seq, int32_t token = -1);
  // Sets cell c to hold pos for the sequence set `seqs` (non-zero); the cell must be empty.
  void cell_assign_seqs(uint32_t c, int32_t pos, uint64_t seqs, int32_t token);
  // Finds n empty cells, lowest index first (not necessarily contiguous), into out[0..n).
  Status find_free(uint32_t n, uint32_t* out) const;
  // The cell holding (seq, pos), or -1.
  int64_t find_cell(SeqId seq, int32_t pos) const;

  // ---- sequences (seq < 0 means every sequence; p0 < 0 means 0; p1 < 0 means +inf) ----
  void seq_rm(SeqId seq, int32_t p0, int32_t p1);
  void seq_cp(SeqId src, SeqId dst, int32_t p0, int32_t p1);  // shares cells, copies no data
  void seq_keep(SeqId seq);
  void clear();

  // ---- statistics ----
  uint32_t n_used() const { return n_used_; }
  uint32_t seq_n_cells(SeqId seq) const;
  int32_t seq_pos_max(SeqId seq) const;  // -1 if empty
  // Cells of seq sorted by position (the order attention reads them in).
  void seq_cells_sorted(SeqId seq, std::vector<uint32_t>* cells) const;

 private:
  void drop_seq_from_cell(uint32_t c, SeqId seq);

  KvLayout layout_;
  std::vector<std::vector<std::unique_ptr<uint8_t[]>>> data_;  // [layer][stream] -> n_cells * row_bytes
  std::vector<int32_t> pos_;
  std::vector<int32_t> tok_;
  std::vector<uint64_t> seqs_;
  uint32_t n_used_ = 0;

  // ---- position shifts (seq_add) and the K-shift they leave pending ----
 public:
  // Adds delta to the position of every cell of `seq` (a valid id) with p0 <= pos < p1 (p0 < 0
  // means 0, p1 < 0 means +inf), as llama.cpp's seq_add does:
  //  - the position belongs to the cell, so a cell shared with other sequences (seq_cp) moves for
  //    all of them; seq_cp shares cells only at identical positions, so sharers stay consistent;
  //  - a cell whose new position is < 0 is freed, for every sequence that held it;
  //  - every other moved cell accumulates delta in cell_shift(c): its K rows were rotated (RoPE)
  //    at the old position and are stale until the model rotates them by cell_shift(c)
  //    (apply_k_shift in src/model/forward.h) and calls shift_clear().
  // Context::seq_add does both steps at once. Between them no other call may free or assign
  // cells (a reused cell would be rotated by a shift that is not its own).
  // The caller guarantees that every new position fits in int32_t (Context::seq_add checks).
  void seq_add(SeqId seq, int32_t p0, int32_t p1, int32_t delta);
  // True while some cell has a K-shift that the model has not applied yet.
  bool has_shift() const { return has_shift_; }
  // Pending shift of cell c (0 when none).
  int32_t cell_shift(uint32_t c) const { return shift_.empty() ? 0 : shift_[c]; }
  // Marks every pending shift applied.
  void shift_clear();

 private:
  std::vector<int32_t> shift_;  // [n_cells] pending K-shift per cell; empty until the first seq_add
  bool has_shift_ = false;
};

inline bool valid_seq_id(SeqId s) { return s >= 0 && s < KvCache::kMaxSeqs; }

}  // namespace kvstash
