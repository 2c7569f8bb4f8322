// State save/restore of a KvCache: format 1.1, reading 1.0 too (docs/state-format.md), to and from bytes or files.
// Owns: the writer, the reader and the atomic file protocol. Depends on kv/, never on model/:
// the model identity arrives as a ModelFingerprint. Sizes come from running the writer against
// a CountingSink. A failed restore leaves every sequence exactly as it was (§5).
// Not thread-safe: callers serialise access to the cache.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "kv/kv_cache.h"
#include "state/byte_io.h"

namespace kvstash {

class ThreadPool;

// The identity of the model a cache belongs to (§4.2). Built by the model module.
struct ModelFingerprint {
  std::string arch;
  std::string name;
  uint64_t hparams_hash = 0;
  uint64_t tokenizer_hash = 0;
  uint64_t tensors_hash = 0;
  uint64_t weights_hash = 0;
  uint32_t n_vocab = 0;
};

enum class StateKind : uint32_t { Sequence = 1, Context = 2 };

struct StateSaveOptions {
  bool durable = true;             // fsync file and directory (files only)
  const float* logits = nullptr;   // optional LOGT section: logits of the sequence's last cell
  uint32_t n_logits = 0;
  uint64_t created_ms = 0;         // 0 = now
  // Format minor to write (docs/state-format.md §2.1): 1 writes the cells as CEL2; 0 writes a
  // 1.0 file (CELL, 16 bytes per cell) for readers that only know 1.0, and for tests. The
  // writer refuses other values.
  uint16_t format_minor = 1;
  FileIo* io = nullptr;            // nullptr = default_file_io()
  // Optional: KV sections are hashed on a second thread of this pool while the caller's thread
  // writes them. Borrowed for the call; the caller must not be running another job on it.
  ThreadPool* pool = nullptr;
};

struct StateSaveResult {
  uint32_t n_tokens = 0;
  uint64_t n_bytes = 0;
};

struct StateLoadOptions {
  bool allow_convert = true;       // convert rows when the live dtypes differ from the file's
  FileIo* io = nullptr;            // nullptr = default_file_io()
  // Optional: KV sections are read and hashed on these threads (when the source allows
  // concurrent reads). Borrowed for the call; the caller must not be running another job on it.
  ThreadPool* pool = nullptr;
};

struct StateLoadResult {
  uint32_t n_tokens = 0;
  uint64_t n_bytes = 0;
  std::vector<int32_t> tokens;     // kind 1: tokens by position
  std::vector<int32_t> positions;  // kind 1: their positions
  std::vector<float> logits;       // empty unless the file had LOGT
  bool converted = false;
  std::string conversion;          // e.g. "layer 0 K f16 -> q8_0, ..." (summary)
  bool two_pass = false;           // the file was verified before the target's cells were dropped
};

// Header, model, layout and cells of a state file, verified (every checksum) but not applied.
struct StateInfo {
  uint16_t major = 0, minor = 0;
  StateKind kind = StateKind::Sequence;
  uint64_t file_bytes = 0;
  uint64_t created_ms = 0;
  uint32_t n_ctx = 0;
  int32_t saved_seq = -1;
  std::string writer;
  ModelFingerprint model;
  KvLayout layout;  // as recorded in the file, n_cells = n_tokens
  std::vector<int32_t> cell_pos, cell_token;
  std::vector<uint64_t> cell_seqs;
  std::string cells_tag;     // "CEL2" (1.1, §4.4.2) or "CELL" (1.0, §4.4.1)
  uint32_t n_cell_runs = 0;  // CEL2: runs stored; CELL: 0
  uint32_t n_logits = 0;
  std::vector<std::string> unknown_sections;
  uint64_t kv_bytes = 0;  // bytes of KV rows
};

// ---- to a sink / from a source ----
Result<StateSaveResult> state_write_seq(const KvCache& cache, SeqId seq, const ModelFingerprint& fp,
                                        const StateSaveOptions& opt, ByteSink& sink);
Result<StateSaveResult> state_write_all(const KvCache& cache, const ModelFingerprint& fp, const StateSaveOptions& opt,
                                        ByteSink& sink);
// Restores a kind-1 file into sequence `dest` (replacing its cells on success).
Result<StateLoadResult> state_read_seq(KvCache& cache, SeqId dest, const ModelFingerprint& live, ByteSource& src,
                                       const StateLoadOptions& opt);
// Restores a kind-2 file, replacing the whole cache on success.
Result<StateLoadResult> state_read_all(KvCache& cache, const ModelFingerprint& live, ByteSource& src, const StateLoadOptions& opt);
// Verifies a file without a cache (checksums, structure, self-consistency of the layout).
// pool: optional, as StateLoadOptions::pool.
Result<StateInfo> state_inspect(ByteSource& src, ThreadPool* pool = nullptr);

// Exact size of state_write_seq's output, from a counting run of the writer.
uint64_t state_size_seq(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const StateSaveOptions& opt);

// ---- files (§6): atomic, durable by default ----
Result<StateSaveResult> state_save_seq_file(const KvCache& cache, SeqId seq, const ModelFingerprint& fp,
                                            const std::string& path, const StateSaveOptions& opt);
Result<StateSaveResult> state_save_all_file(const KvCache& cache, const ModelFingerprint& fp, const std::string& path,
                                            const StateSaveOptions& opt);
Result<StateLoadResult> state_load_seq_file(KvCache& cache, SeqId dest, const ModelFingerprint& live, const std::string& path,
                                            const StateLoadOptions& opt);
Result<StateLoadResult> state_load_all_file(KvCache& cache, const ModelFingerprint& live, const std::string& path,
                                            const StateLoadOptions& opt);
// Removes `.NAME.kvstash-tmp.PID` files in dir whose PID is not alive; returns how many.
int state_cleanup_temp_files(const std::string& dir);
// Writes `bytes` produced by `produce` to path atomically (temp + fsync + rename + dir fsync).
Status atomic_write_file(const std::string& path, bool durable, FileIo& io,
                         const std::function<Status(ByteSink&)>& produce, uint64_t* n_written);

}  // namespace kvstash
