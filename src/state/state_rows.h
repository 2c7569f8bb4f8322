// KVDT rows (docs/state-format.md §4.5, §5.2): from a state file into KvCache cells, for the reader.
// Owns: reading each KV section's payload, hashing it where it lands, and placing its rows:
// straight into runs of consecutive free cells (one read per run piece, no intermediate copy),
// else through a small buffer (scattered holes, dtype conversion); sections spread over a thread
// pool when the source allows concurrent reads. Never commits cells: the caller does that once
// every checksum verified (§5.3); before that, rows land only in cells the caller found free.
// Internal to src/state. Thread-safe per call; RowDest is read-only while sections are read.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/threadpool.h"
#include "kv/kv_cache.h"
#include "state/byte_io.h"

namespace kvstash {

// Where a restore puts file rows: file row k of every stream goes to cell cells[k].
class RowDest {
 public:
  // cache: the live cache; file: the layout recorded in the file (dtypes may differ, §5);
  // cells: one free cell per file row. All three must outlive the RowDest.
  RowDest(KvCache& cache, const KvLayout& file, const std::vector<uint32_t>& cells);

  // File rows [k0, k0 + n) land in the consecutive cells cells[k0] .. cells[k0] + n - 1.
  struct Run {
    uint32_t k0, n;
  };
  const std::vector<Run>& runs() const { return runs_; }
  // True when stream (il, si) has the same dtype in the file and the cache: rows can be read in place.
  bool same_type(uint32_t il, uint32_t si) const;
  // The cache row of file row k in stream (il, si).
  uint8_t* row(uint32_t il, uint32_t si, uint32_t k) const { return cache_.row(il, si, cells_[k]); }
  // Copies (converting the dtype if needed) file rows [k0, k0 + n) of stream (il, si) from p,
  // n x the file's row bytes. tmp: the caller's scratch, one per thread.
  void place(uint32_t il, uint32_t si, uint32_t k0, uint32_t n, const uint8_t* p, std::vector<float>& tmp) const;

 private:
  KvCache& cache_;
  const KvLayout& file_;
  const std::vector<uint32_t>& cells_;
  std::vector<Run> runs_;
};

// One KVDT section whose frame the reader has checked (§3, §4.5: tag, flags, payload bytes).
struct KvSection {
  uint32_t il = 0, si = 0;  // layer and stream index it must hold
  uint32_t index = 0;       // section number in the file, for messages
  uint64_t payload_off = 0; // payload bytes: 8 + row bytes x file.n_cells()
};

// Reads the payloads of `sections` (rows of the layout `file`): checks the (layer, stream) prefix,
// hashes the rows, and compares the trailer (§3); with dest, the rows land there. Sections run
// in file order, or over `pool` (may be null) when src.concurrent_reads(); either way the error
// returned is the one of the first failing section in file order, and no section after it is
// hashed to completion by choice (threads stop taking sections once one failed).
Status read_kv_sections(ByteSource& src, const KvLayout& file, const std::vector<KvSection>& sections, const RowDest* dest,
                        ThreadPool* pool);

}  // namespace kvstash
