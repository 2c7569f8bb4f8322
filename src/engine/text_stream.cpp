#include "engine/text_stream.h"

#include <algorithm>

namespace kvstash {

TextStream::TextStream(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

size_t TextStream::incomplete_utf8_tail(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of the last sequence.
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = 1;
    if ((c & 0xE0) == 0xC0) need = 2;
    else if ((c & 0xF0) == 0xE0) need = 3;
    else if ((c & 0xF8) == 0xF0) need = 4;
    return need > back ? back : 0;
  }
  return 0;  // ASCII end, or more continuation bytes than any sequence has: nothing to wait for
}

std::string TextStream::push(std::string_view piece, bool* stopped) {
  *stopped = stopped_;
  if (stopped_) return {};
  held_.append(piece);
  // The earliest complete stop string wins (ties: the first listed).
  size_t best = std::string::npos;
  const std::string* word = nullptr;
  for (const auto& s : stops_) {
    const size_t p = held_.find(s);
    if (p < best) {
      best = p;
      word = &s;
    }
  }
  if (word) {
    std::string out = held_.substr(0, best);
    stopping_word_ = *word;
    stopped_ = true;
    *stopped = true;
    held_.clear();
    return out;
  }
  // Hold the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, held_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string_view release(held_.data(), held_.size() - hold);
  const size_t utf8_hold = incomplete_utf8_tail(release);
  release.remove_suffix(utf8_hold);
  std::string out(release);
  held_.erase(0, out.size());
  return out;
}

std::string TextStream::flush() {
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace kvstash
