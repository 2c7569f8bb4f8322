// TextStream: turns the pieces of generated tokens into text that is safe to release to a client.
// Owns: the text held back because it may be the start of a stop string or an incomplete UTF-8
// sequence. Stop strings are matched across token boundaries, like llama.cpp's server.
// Not thread-safe: one per generation.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace kvstash {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stops = {});

  // Appends a token's piece and returns the text that can be released now. When a stop string
  // completes, returns the text before it, sets *stopped and drops everything after it; later
  // calls return "". A partial stop string or an incomplete UTF-8 sequence at the end is held.
  std::string push(std::string_view piece, bool* stopped);
  // Everything still held back (the generation ended for another reason).
  std::string flush();

  const std::string& stopping_word() const { return stopping_word_; }
  bool stopped() const { return stopped_; }

  // Bytes at the end of s that form an incomplete (so far valid-looking) UTF-8 sequence: 0..3.
  static size_t incomplete_utf8_tail(std::string_view s);

 private:
  std::vector<std::string> stops_;
  std::string held_;
  std::string stopping_word_;
  bool stopped_ = false;
};

}  // namespace kvstash
