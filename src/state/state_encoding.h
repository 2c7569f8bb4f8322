// Little-endian encoder/decoder for the small sections of the state format.
// Owns nothing; Dec never reads past its buffer and reports truncation through ok().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/le.h"

namespace kvstash {

struct Enc {
  std::vector<uint8_t> b;
  template <typename T>
  void put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    store_le<T>(b.data() + n, v);
  }
  void u8(uint8_t v) { put(v); }
  void u16(uint16_t v) { put(v); }
  void u32(uint32_t v) { put(v); }
  void i32(int32_t v) { put(v); }
  void u64(uint64_t v) { put(v); }
  void str(const std::string& s) {
    const size_t n = s.size() > 0xffff ? 0xffff : s.size();
    u16(static_cast<uint16_t>(n));
    b.insert(b.end(), s.begin(), s.begin() + static_cast<std::ptrdiff_t>(n));
  }
};

class Dec {
 public:
  Dec(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T get() {
    if (!ok_ || n_ - pos_ < sizeof(T)) {
      ok_ = false;
      return T{};
    }
    T v = load_le<T>(p_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    const uint16_t n = get<uint16_t>();
    if (!ok_ || n_ - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  bool ok() const { return ok_; }
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace kvstash
