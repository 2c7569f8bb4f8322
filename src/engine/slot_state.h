// Slot persistence: one slot (= one sequence of the KV cache) to and from a state file.
// Owns: the checks that make a state file acceptable for a slot (sequence kind, this model,
// token ids, contiguous positions, slot context) — all done before the cache is touched, so a
// refused restore leaves the slot as it was. Files are opened without following a final
// symlink (O_NOFOLLOW); paths are resolved and confined by the caller.
// Not thread-safe: the caller owns the cache (the scheduler thread).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "kv/kv_cache.h"
#include "state/state.h"

namespace kvstash {

struct SlotSaveInfo {
  uint32_t n_tokens = 0;
  uint64_t n_bytes = 0;
};

// Saves sequence `seq` atomically to `path`, with the logits of its last cell when `logits` is
// given (n_logits floats), so that a restored full prompt needs no recomputation.
// pool (optional): hashes KV sections while they are written (StateSaveOptions::pool).
Result<SlotSaveInfo> slot_state_save(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const float* logits,
                                     uint32_t n_logits, const std::string& path, bool durable, ThreadPool* pool = nullptr);

struct SlotRestoreInfo {
  std::vector<int32_t> tokens;  // by position 0..n-1
  std::vector<float> logits;    // empty, or n_vocab logits after tokens.back()
  uint64_t n_bytes = 0;
};

// Restores `path` into sequence `seq`. InvalidArgument/Corruption/NotFound/ResourceExhausted
// with the reader's reason when the file is unusable; the sequence is then unchanged.
// pool (optional): reads and hashes KV sections on these threads (StateLoadOptions::pool).
Result<SlotRestoreInfo> slot_state_restore(KvCache& cache, SeqId seq, const ModelFingerprint& fp, int32_t n_vocab,
                                           int32_t n_ctx_slot, const std::string& path, ThreadPool* pool = nullptr);

// Verifies a state file (every checksum) without a cache, for listings.
Result<StateInfo> slot_state_inspect(const std::string& path);

}  // namespace kvstash
