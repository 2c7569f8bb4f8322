// Counts global operator new calls and bytes in the test binary (tests/alloc_counter.cpp replaces them).
#pragma once

#include <cstdint>

namespace kvstash::test {
// Allocations made so far by any thread of the test binary.
int64_t n_allocs();
// Bytes requested from operator new so far (cumulative, never decreases).
int64_t bytes_allocated();
}  // namespace kvstash::test
