// SPM segmentation of one raw-text fragment, as llama.cpp's llm_tokenizer_spm_session.
// Owns: nothing; works on a caller's text and appends to a caller's vector. Private to
// src/model/ (Vocab::tokenize is the public entry). Never throws. Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvstash {

class Vocab;

namespace spm {

// llama.cpp llama_escape_whitespace: optional leading ' ', then every ' ' -> "\u2581" (▁).
std::string escape_whitespace(std::string_view text, bool add_space_prefix);

// Appends the ids of the already escaped `text` to `out`: UTF-8 characters are merged
// pairwise by highest token score (ties: leftmost), and characters left without a token fall
// back to one byte token per byte (unk_id() if the vocab lacks it, dropped if it lacks both).
void tokenize_escaped(const Vocab& vocab, std::string_view text, std::vector<int32_t>& out);

}  // namespace spm
}  // namespace kvstash
