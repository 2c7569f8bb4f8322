// XXH3-64 (xxHash 0.8, seed 0): the checksum of the state file's header and sections (docs/state-format.md).
// Owns the choice of implementation: libxxhash's run-time dispatched entry points (SSE2, AVX2 or
// AVX-512, chosen once per process) where the library has them (KVSTASH_XXH_DISPATCH, set by
// CMake), else the portable ones. All compute the same function, so files never depend on it.
// Thread-safe: a StateHasher belongs to one thread at a time; the free function has no state.
#pragma once

#include <xxhash.h>

#include <cstddef>
#include <cstdint>

namespace kvstash {

// One-shot XXH3-64 of n bytes at p.
uint64_t state_hash(const void* p, size_t n);

// Streaming XXH3-64: reset(), update() in order, digest().
class StateHasher {
 public:
  StateHasher();
  ~StateHasher();
  StateHasher(const StateHasher&) = delete;
  StateHasher& operator=(const StateHasher&) = delete;
  void reset();
  void update(const void* p, size_t n);
  uint64_t digest() const;

 private:
  XXH3_state_t* st_;
};

}  // namespace kvstash
