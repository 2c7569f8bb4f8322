// Fixed-width little-endian encode/decode helpers: the only place byte order is handled.
// Owns nothing. Never reads past the given pointer + sizeof(T); callers bound-check first.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace kvstash {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kvstash supports little-endian hosts only");

template <typename T>
inline T load_le(const void* p) {
  static_assert(std::is_trivially_copyable_v<T>);
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
inline void store_le(void* p, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace kvstash
