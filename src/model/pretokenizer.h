// BPE pre-tokenizer: splits raw text into words with the regex list llama.cpp uses for a
// tokenizer.ggml.pre value (llm_tokenizer_bpe), evaluated on PCRE2 the way llama.cpp's
// unicode_regex_split evaluates it (each regex splits the pieces left by the previous one).
// Owns: the compiled PCRE2 patterns, compiled once per PreTokenizer; no PCRE2 type appears here.
// Never throws; any bytes are accepted. Thread-safe: split() is const and allocates its own
// match data, so one PreTokenizer may serve many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kvstash {

// llama.cpp's LLAMA_VOCAB_PRE_TYPE_* values we support.
enum class PreTokenizerKind {
  Default,      // "default" or no tokenizer.ggml.pre: llama.cpp's fallback list (not the gpt-2 one)
  Gpt2,         // "gpt-2"
  Llama3,       // "llama-bpe", "llama3", "llama-v3"
  DeepseekLlm,  // "deepseek-llm"
};

// tokenizer.ggml.pre value -> kind. An empty name is llama.cpp's "missing key" case (Default).
// Unknown names: Unsupported naming the value and listing the supported ones.
Result<PreTokenizerKind> pre_tokenizer_kind_from_name(std::string_view name);

// llama.cpp unicode_cpts_from_utf8: lenient decoding, as described at PreTokenizer::split();
// shared with the BPE byte-level decoder.
std::vector<uint32_t> utf8_to_cpts_lenient(std::string_view text);
// UTF-8 of one code point <= U+10FFFF; surrogates are encoded as they are (as llama.cpp).
void append_utf8(std::string& out, uint32_t cpt);

// The exact regex list of llama.cpp's llm_tokenizer_bpe constructor for `kind`, in order.
const std::vector<std::string>& pre_tokenizer_regexes(PreTokenizerKind kind);

class PreTokenizer {
 public:
  PreTokenizer();  // no regexes: split() yields the whole text as one word
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Compiles the regex list of `kind`. Internal if PCRE2 rejects a pattern (a kvstash bug).
  static Result<PreTokenizer> create(PreTokenizerKind kind);

  PreTokenizerKind kind() const { return kind_; }

  // llama.cpp unicode_regex_split without the final byte-level encoding: the words of `text`,
  // in order, as UTF-8. `text` is first decoded as llama.cpp does (unicode_cpts_from_utf8): an
  // invalid byte becomes U+FFFD, overlong forms decode to their code point, and each word is
  // re-encoded in canonical UTF-8 (so "\xC0\x80" yields "\0"). The words concatenate to that
  // re-encoding; for valid UTF-8 that is `text` itself. Where llama.cpp throws (a 4-byte form
  // above U+10FFFF) we treat the lead byte as invalid instead.
  std::vector<std::string> split(std::string_view text) const;

 private:
  struct Impl;
  PreTokenizerKind kind_ = PreTokenizerKind::Default;
  std::unique_ptr<const Impl> impl_;
};

}  // namespace kvstash
