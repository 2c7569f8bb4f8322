// The cells section of a state file (docs/state-format.md §4.4): which position, token and
// sequences each saved row belongs to. Owns the two encodings, 1.0's CELL records (§4.4.1) and
// 1.1's CEL2 runs (§4.4.2): building runs for the writer, and for the reader the size rules
// (checked before anything is allocated), decoding and every §4.4 rule. Does no I/O: the writer
// and the reader move the bytes. Internal to src/state. Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "kv/kv_cache.h"
#include "state/state.h"

namespace kvstash {

// §4.4.2: `n` consecutive cells (row order) at positions first_pos, first_pos + 1, ..., all held
// by the sequence set `seqs`.
struct CellRun {
  int32_t first_pos = 0;
  uint32_t n = 0;
  uint64_t seqs = 0;
};

// The sequence set the writer records for a cell: 1 in a kind-1 file (bit 0 is the file's one
// sequence, §4.4), the cell's set in a kind-2 file.
uint64_t cell_set_for(const KvCache& cache, uint32_t cell, StateKind kind);

// The writer's runs over `cells` (row order): each as long as it can be (§4.4.2).
std::vector<CellRun> cell_runs(const KvCache& cache, const std::vector<uint32_t>& cells, StateKind kind);

// Cells as the reader returns them, one entry per row in row order.
struct CellList {
  std::vector<int32_t> pos, token;
  std::vector<uint64_t> seqs;
  uint32_t n_runs = 0;  // CEL2: runs stored in the file; CELL: 0
};

// Checks a cells section's payload size against its counts before it is read (§4.4.1, §4.4.2).
// tag: kTagCells or kTagCells2; prefix: the payload's first min(8, payload_bytes) bytes.
Status check_cells_size(uint32_t tag, uint64_t payload_bytes, const uint8_t* prefix, size_t prefix_bytes, uint32_t n_tokens);

// Decodes a cells payload whose size check_cells_size accepted (n_tokens: META's), and checks
// every §4.4 rule.
Status decode_cells(uint32_t tag, const uint8_t* p, size_t n, uint32_t n_tokens, StateKind kind, uint32_t n_vocab, CellList* out);

}  // namespace kvstash
