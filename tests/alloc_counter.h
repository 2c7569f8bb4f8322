// Counts global operator new calls in the test binary (tests/alloc_counter.cpp replaces them).
#pragma once

#include <cstdint>

namespace kvstash::test {
// Allocations made so far by any thread of the test binary.
int64_t n_allocs();
}  // namespace kvstash::test
