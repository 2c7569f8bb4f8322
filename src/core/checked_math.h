// Overflow-safe arithmetic for sizes read from untrusted input.
// Owns nothing; pure functions. Thread-safe.
#pragma once

#include <cstdint>

namespace kvstash {

// Each returns false on overflow and leaves *out unspecified.
inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Round up to a multiple of align (align > 0).
inline bool checked_align_up(uint64_t v, uint64_t align, uint64_t* out) {
  uint64_t r = v % align;
  if (r == 0) {
    *out = v;
    return true;
  }
  return checked_add(v, align - r, out);
}

}  // namespace kvstash
