// Cells sections (docs/state-format.md §4.4): CEL2 runs for the writer, CELL and CEL2 for the reader.
#include "state/state_cells.h"

#include <string>
#include <unordered_set>

#include "core/le.h"
#include "state/state_encoding.h"
#include "state/state_format.h"

namespace kvstash {

using namespace statefmt;

namespace {

std::string num(uint64_t v) { return std::to_string(v); }

// §4.4.1: 16-byte records.
void decode_cell_records(Dec& d, uint32_t n_cells, CellList* out) {
  for (uint32_t k = 0; k < n_cells; ++k) {
    out->pos[k] = d.get<int32_t>();
    out->token[k] = d.get<int32_t>();
    out->seqs[k] = d.get<uint64_t>();
  }
}

// §4.4.2: runs, then one token per cell. Every run rule is checked before a cell is filled in.
Status decode_cell_runs(Dec& d, uint32_t n_cells, uint32_t n_runs, CellList* out) {
  std::vector<CellRun> runs(n_runs);
  uint64_t total = 0;
  for (uint32_t j = 0; j < n_runs; ++j) {
    CellRun& r = runs[j];
    r.first_pos = d.get<int32_t>();
    r.n = d.get<uint32_t>();
    r.seqs = d.get<uint64_t>();
    const std::string where = "state: CEL2 run " + num(j);
    if (r.n == 0) return corruption(where + " has count 0");
    if (r.first_pos < 0) return corruption(where + " starts at negative position " + std::to_string(r.first_pos));
    if (int64_t(r.first_pos) + int64_t(r.n) - 1 > INT32_MAX)
      return corruption(where + ": position " + std::to_string(r.first_pos) + " + count " + num(r.n) + " overflows i32");
    total += r.n;
    if (total > n_cells) return corruption(where + ": runs hold more cells than n_cells " + num(n_cells));
  }
  if (total != n_cells) return corruption("state: CEL2 runs hold " + num(total) + " cells, n_cells is " + num(n_cells));
  uint32_t k = 0;
  for (const CellRun& r : runs)
    for (uint32_t i = 0; i < r.n; ++i, ++k) {
      out->pos[k] = r.first_pos + static_cast<int32_t>(i);
      out->seqs[k] = r.seqs;
    }
  for (uint32_t c = 0; c < n_cells; ++c) out->token[c] = d.get<int32_t>();
  out->n_runs = n_runs;
  return Status::ok();
}

// §4.4: the rules every cell list obeys, whichever section carried it.
Status check_cell_list(const CellList& c, StateKind kind, uint32_t n_vocab) {
  const size_t n = c.pos.size();
  for (size_t k = 0; k < n; ++k) {
    const std::string where = "state: cell " + num(k);
    if (c.pos[k] < 0) return corruption(where + " has negative position " + std::to_string(c.pos[k]));
    if (c.token[k] < -1 || (c.token[k] >= 0 && uint32_t(c.token[k]) >= n_vocab))
      return corruption(where + " has token " + std::to_string(c.token[k]) + ", vocabulary has " + num(n_vocab));
    if (kind == StateKind::Sequence) {
      if (c.seqs[k] != 1) return corruption(where + " of a sequence file has sequence set " + num(c.seqs[k]) + ", expected 1");
      if (k > 0 && c.pos[k] <= c.pos[k - 1])
        return corruption(where + ": positions are not strictly increasing (" + std::to_string(c.pos[k - 1]) + " then " +
                          std::to_string(c.pos[k]) + ")");
    } else if (c.seqs[k] == 0) {
      return corruption(where + " belongs to no sequence");
    }
  }
  if (kind == StateKind::Context) {
    std::unordered_set<uint64_t> seen;
    seen.reserve(n);
    for (size_t k = 0; k < n; ++k)
      for (int s = 0; s < KvCache::kMaxSeqs; ++s)
        if ((c.seqs[k] >> s) & 1)
          if (!seen.insert((uint64_t(s) << 32) | uint32_t(c.pos[k])).second)
            return corruption("state: sequence " + std::to_string(s) + " holds position " + std::to_string(c.pos[k]) + " twice");
  }
  return Status::ok();
}

}  // namespace

uint64_t cell_set_for(const KvCache& cache, uint32_t cell, StateKind kind) {
  return kind == StateKind::Sequence ? uint64_t(1) : cache.cell_seqs(cell);
}

std::vector<CellRun> cell_runs(const KvCache& cache, const std::vector<uint32_t>& cells, StateKind kind) {
  std::vector<CellRun> runs;
  for (uint32_t c : cells) {
    const int32_t pos = cache.cell_pos(c);
    const uint64_t seqs = cell_set_for(cache, c, kind);
    if (!runs.empty()) {
      CellRun& r = runs.back();
      if (r.seqs == seqs && int64_t(r.first_pos) + r.n == pos) {
        ++r.n;
        continue;
      }
    }
    runs.push_back({pos, 1, seqs});
  }
  return runs;
}

Status check_cells_size(uint32_t tag, uint64_t payload_bytes, const uint8_t* prefix, size_t prefix_bytes, uint32_t n_tokens) {
  if (tag == kTagCells) {
    const uint64_t want = kCellsPrefixBytes + uint64_t(kCellRecordBytes) * n_tokens;
    if (payload_bytes != want)
      return corruption("state: CELL section is " + num(payload_bytes) + " bytes, " + num(n_tokens) + " tokens need " + num(want));
    return Status::ok();
  }
  if (payload_bytes < kCells2PrefixBytes || prefix_bytes < kCells2PrefixBytes)
    return corruption("state: CEL2 section is " + num(payload_bytes) + " bytes, shorter than its " + num(kCells2PrefixBytes) + "-byte counts");
  const uint32_t n_cells = load_le<uint32_t>(prefix), n_runs = load_le<uint32_t>(prefix + 4);
  if (n_cells != n_tokens) return corruption("state: CEL2 n_cells " + num(n_cells) + " differs from META n_tokens " + num(n_tokens));
  if (n_runs > n_cells) return corruption("state: CEL2 has " + num(n_runs) + " runs for " + num(n_cells) + " cells");
  if ((n_runs == 0) != (n_cells == 0)) return corruption("state: CEL2 has no runs for " + num(n_cells) + " cells");
  const uint64_t want = kCells2PrefixBytes + uint64_t(kCellRunBytes) * n_runs + uint64_t(kCellTokenBytes) * n_cells;
  if (payload_bytes != want)
    return corruption("state: CEL2 section is " + num(payload_bytes) + " bytes, " + num(n_runs) + " runs and " + num(n_cells) + " cells need " +
                      num(want));
  return Status::ok();
}

Status decode_cells(uint32_t tag, const uint8_t* p, size_t n, uint32_t n_tokens, StateKind kind, uint32_t n_vocab, CellList* out) {
  Dec d(p, n);
  const uint32_t n_cells = d.get<uint32_t>();
  const uint32_t n_runs = tag == kTagCells2 ? d.get<uint32_t>() : 0;
  if (!d.ok() || n_cells != n_tokens) return corruption("state: " + std::string(tag == kTagCells2 ? "CEL2" : "CELL") + " count differs from META n_tokens");
  // The size check made n_cells x 4 bytes (CEL2) or x 16 (CELL) part of this payload.
  out->pos.assign(n_cells, 0);
  out->token.assign(n_cells, 0);
  out->seqs.assign(n_cells, 0);
  out->n_runs = 0;
  if (tag == kTagCells2) {
    KV_RETURN_IF_ERROR(decode_cell_runs(d, n_cells, n_runs, out));
  } else {
    decode_cell_records(d, n_cells, out);
  }
  if (!d.ok() || d.remaining() != 0) return corruption("state: cells section size does not match its contents");
  return check_cell_list(*out, kind, n_vocab);
}

}  // namespace kvstash
