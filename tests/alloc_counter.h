// Counts global operator new calls and bytes in the test binary (tests/alloc_counter.cpp replaces
// them), and can refuse large ones, so a test shows that a parser never asks for a huge block.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvstash::test {
// Allocations made so far by any thread of the test binary.
int64_t n_allocs();
// Bytes requested from operator new so far (cumulative, never decreases).
int64_t bytes_allocated();

// While one is alive, any operator new of more than `max_bytes` throws std::bad_alloc without
// allocating. Not nestable; meant for one test thread at a time.
class AllocLimit {
 public:
  explicit AllocLimit(size_t max_bytes);
  ~AllocLimit();
  AllocLimit(const AllocLimit&) = delete;
  AllocLimit& operator=(const AllocLimit&) = delete;
  // The largest request refused so far (0 when none was).
  size_t largest_refused() const;
};
}  // namespace kvstash::test
