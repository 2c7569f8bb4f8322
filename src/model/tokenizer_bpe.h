// BPE segmentation for tokenizer.ggml.model "gpt2", as llama.cpp's llm_tokenizer_bpe_session:
// pre-tokenized words are mapped to GPT-2 byte-level text, merged pairwise by merge rank
// (tokenizer.ggml.merges) and looked up in the vocab; plus the reverse byte-level decoding.
// Owns: MergeRanks, the merge table. Private to src/model/ (Vocab is the public entry).
// Never throws. Thread-safe: MergeRanks is immutable after load; the functions are pure.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvstash {

class Vocab;
class PreTokenizer;

namespace bpe {

// GPT-2 bytes_to_unicode(): the UTF-8 text of the printable character standing for `byte`
// (printable Latin-1 bytes stand for themselves, the other 68 for U+0100..U+0143).
std::string_view byte_to_unicode(uint8_t byte);
// Byte-level encoding: every byte of `raw` replaced by byte_to_unicode(byte).
std::string encode_bytes(std::string_view raw);
// llama.cpp llama_decode_text: byte-level text back to bytes. A character outside the byte-level
// alphabet (or invalid UTF-8, read as U+FFFD) becomes "[UNK_BYTE_0x<its UTF-8 in hex>" followed
// by the whole `text` and "]", exactly as llama.cpp writes it.
std::string decode_text(std::string_view text);

// tokenizer.ggml.merges as (left, right) -> rank; a lower rank merges first.
class MergeRanks {
 public:
  // Keeps the first rank given for a pair (llama.cpp's bpe_ranks.emplace).
  void add(std::string_view left, std::string_view right, int32_t rank);
  int32_t find(std::string_view left, std::string_view right) const;  // -1 when absent; no allocation
  size_t size() const { return map_.size(); }
  void reserve(size_t n) { map_.reserve(n); }

 private:
  struct Key {
    std::string left;
    std::string right;
  };
  struct KeyView {
    std::string_view left;
    std::string_view right;
  };
  static KeyView view(const Key& k) { return {k.left, k.right}; }
  static KeyView view(const KeyView& k) { return k; }
  struct Hash {
    using is_transparent = void;
    template <typename K>
    size_t operator()(const K& k) const {
      const KeyView v = view(k);
      const size_t h = std::hash<std::string_view>{}(v.left);
      return h ^ (std::hash<std::string_view>{}(v.right) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
    }
  };
  struct Eq {
    using is_transparent = void;
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      const KeyView x = view(a), y = view(b);
      return x.left == y.left && x.right == y.right;
    }
  };
  std::unordered_map<Key, int32_t, Hash, Eq> map_;
};

// Appends the ids of one raw-text fragment: pre-tokenize with `pre`, byte-encode each word,
// merge by `ranks`, look the symbols up in `vocab`. With `ignore_merges` (llama-3) a word that
// is a token as a whole is emitted directly. A final symbol that is not a token falls back to
// its single bytes that are tokens; bytes without a token are dropped (llama.cpp).
void tokenize_text(const Vocab& vocab, const PreTokenizer& pre, const MergeRanks& ranks, bool ignore_merges, std::string_view text,
                   std::vector<int32_t>& out);

}  // namespace bpe
}  // namespace kvstash
