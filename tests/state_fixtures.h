// Fixtures of the state tests: the observable state of a KvCache (bookkeeping of every cell and
// every occupied row), for tests that assert a failed operation changed nothing; synthetic rows;
// file helpers.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "kv/kv_cache.h"

namespace kvstash::test {

struct Snapshot {
  std::vector<int32_t> pos, tok;
  std::vector<uint64_t> seqs;
  uint32_t n_used = 0;
  std::vector<uint8_t> rows;  // every row of every occupied cell, in cell order
  bool operator==(const Snapshot&) const = default;
};

inline Snapshot snapshot(const KvCache& c) {
  Snapshot s;
  s.n_used = c.n_used();
  const KvLayout& L = c.layout();
  for (uint32_t i = 0; i < c.n_cells(); ++i) {
    s.pos.push_back(c.cell_pos(i));
    s.tok.push_back(c.cell_token(i));
    s.seqs.push_back(c.cell_seqs(i));
    if (c.cell_empty(i)) continue;
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
        const uint8_t* r = c.row(il, si, i);
        s.rows.insert(s.rows.end(), r, r + L.layer(il).streams[si].row_bytes);
      }
  }
  return s;
}

// snapshot(c) == s without building a new snapshot (the corruption tests call it ~100k times).
inline bool unchanged(const KvCache& c, const Snapshot& s) {
  if (c.n_used() != s.n_used || c.n_cells() != s.pos.size()) return false;
  const KvLayout& L = c.layout();
  size_t off = 0;
  for (uint32_t i = 0; i < c.n_cells(); ++i) {
    if (c.cell_pos(i) != s.pos[i] || c.cell_token(i) != s.tok[i] || c.cell_seqs(i) != s.seqs[i]) return false;
    if (c.cell_empty(i)) continue;
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
        const size_t rb = L.layer(il).streams[si].row_bytes;
        if (off + rb > s.rows.size() || std::memcmp(c.row(il, si, i), s.rows.data() + off, rb) != 0) return false;
        off += rb;
      }
  }
  return off == s.rows.size();
}

// Fills cells [first, first + n) with seq at positions 0.., tokens and rows derived from `salt`.
inline void fill_cells(KvCache& c, SeqId seq, uint32_t first, uint32_t n, uint8_t salt) {
  const KvLayout& L = c.layout();
  for (uint32_t k = 0; k < n; ++k) {
    c.cell_assign(first + k, static_cast<int32_t>(k), seq, static_cast<int32_t>((k * 7 + salt) % 500));
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
        uint8_t* r = c.row(il, si, first + k);
        // f16/bf16/f32 bit patterns that are finite: keep the top byte of each element small.
        for (size_t b = 0; b < L.layer(il).streams[si].row_bytes; ++b) r[b] = static_cast<uint8_t>((b % 2 ? 0x3c : (b + k + salt)) & 0xff);
      }
  }
}

inline std::vector<uint8_t> slurp_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

inline std::set<std::string> listing(const std::filesystem::path& dir) {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

}  // namespace kvstash::test
