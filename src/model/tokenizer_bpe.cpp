// BPE tokenizer: a port of llama.cpp's llm_tokenizer_bpe_session (src/llama-vocab.cpp) and of
// the byte-level helpers of src/unicode.cpp (unicode_byte_to_utf8_map, llama_decode_text).
#include "model/tokenizer_bpe.h"

#include <algorithm>
#include <array>
#include <cstdio>

#include "model/pretokenizer.h"
#include "model/vocab.h"

namespace kvstash::bpe {
namespace {

constexpr uint32_t kByteLevelEnd = 0x144;  // byte-level characters are < U+0144

// GPT-2 bytes_to_unicode(): byte -> code point.
constexpr std::array<uint16_t, 256> kByteToCpt = [] {
  std::array<uint16_t, 256> t{};
  uint16_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t[b] = printable ? static_cast<uint16_t>(b) : next++;
  }
  return t;
}();
static_assert(kByteToCpt[0x20] == 0x120, "space is 'Ġ' (U+0120)");
static_assert(kByteToCpt[0xAD] == kByteLevelEnd - 1, "the last stand-in is U+0143");

// Code point -> byte, -1 outside the byte-level alphabet.
constexpr std::array<int16_t, kByteLevelEnd> kCptToByte = [] {
  std::array<int16_t, kByteLevelEnd> t{};
  for (auto& v : t) v = -1;
  for (int b = 0; b < 256; ++b) t[kByteToCpt[b]] = static_cast<int16_t>(b);
  return t;
}();

struct ByteText {
  char bytes[2];
  uint8_t n;
};
constexpr std::array<ByteText, 256> kByteText = [] {
  std::array<ByteText, 256> t{};
  for (int b = 0; b < 256; ++b) {
    const uint16_t c = kByteToCpt[b];
    if (c < 0x80) {
      t[b] = {{static_cast<char>(c), 0}, 1};
    } else {
      t[b] = {{static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))}, 2};
    }
  }
  return t;
}();

// llama.cpp unicode_len_utf8: sequence length from the lead byte's high nibble.
size_t utf8_len(char lead) {
  static constexpr size_t kLookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLookup[static_cast<uint8_t>(lead) >> 4];
}

// One run of bytes [offset, offset + n) of the word; n == 0 once merged into its left
// neighbour. prev/next link the live symbols (-1 = none).
struct Symbol {
  int64_t prev;
  int64_t next;
  size_t offset;
  size_t n;
};

struct Bigram {
  int64_t left;
  int64_t right;
  int32_t rank;
  size_t size;  // bytes of left + right when queued; a mismatch later means the entry is stale
};

// Heap order of llm_bigram_bpe::comparator: lowest rank first, then the leftmost pair.
struct BigramAfter {
  bool operator()(const Bigram& l, const Bigram& r) const { return l.rank > r.rank || (l.rank == r.rank && l.left > r.left); }
};

// Buffers reused across the words of one fragment.
class Session {
 public:
  Session(const Vocab& vocab, const MergeRanks& ranks, bool ignore_merges) : vocab_(vocab), ranks_(ranks), ignore_merges_(ignore_merges) {}

  // One byte-level encoded word.
  void tokenize_word(std::string_view word, std::vector<int32_t>& out) {
    if (word.empty()) return;
    if (ignore_merges_) {
      const int32_t id = vocab_.find_token(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    symbols_.clear();
    heap_.clear();
    for (size_t offs = 0; offs < word.size();) {
      const size_t n = std::min(utf8_len(word[offs]), word.size() - offs);
      const auto index = static_cast<int64_t>(symbols_.size());
      symbols_.push_back({index - 1, offs + n == word.size() ? -1 : index + 1, offs, n});
      offs += n;
    }
    for (size_t i = 1; i < symbols_.size(); ++i) add_bigram(word, static_cast<int64_t>(i) - 1, static_cast<int64_t>(i));

    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), BigramAfter{});
      const Bigram bigram = heap_.back();
      heap_.pop_back();
      Symbol& left = symbols_[static_cast<size_t>(bigram.left)];
      Symbol& right = symbols_[static_cast<size_t>(bigram.right)];
      // llama.cpp compares the texts; sizes only grow, and a live left symbol's next is the
      // right one it was queued with, so equal sizes mean equal texts.
      if (left.n == 0 || right.n == 0 || left.n + right.n != bigram.size) continue;

      left.n += right.n;
      right.n = 0;
      left.next = right.next;
      if (right.next >= 0) symbols_[static_cast<size_t>(right.next)].prev = bigram.left;

      add_bigram(word, left.prev, bigram.left);
      add_bigram(word, bigram.left, left.next);
    }

    for (int64_t i = 0; i != -1; i = symbols_[static_cast<size_t>(i)].next) {
      const Symbol& sym = symbols_[static_cast<size_t>(i)];
      const std::string_view piece = word.substr(sym.offset, sym.n);
      const int32_t id = vocab_.find_token(piece);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      for (size_t j = 0; j < piece.size(); ++j) {
        const int32_t byte_id = vocab_.find_token(piece.substr(j, 1));
        if (byte_id >= 0) out.push_back(byte_id);
      }
    }
  }

 private:
  void add_bigram(std::string_view word, int64_t left, int64_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols_[static_cast<size_t>(left)];
    const Symbol& r = symbols_[static_cast<size_t>(right)];
    const int32_t rank = ranks_.find(word.substr(l.offset, l.n), word.substr(r.offset, r.n));
    if (rank < 0) return;
    heap_.push_back({left, right, rank, l.n + r.n});
    std::push_heap(heap_.begin(), heap_.end(), BigramAfter{});
  }

  const Vocab& vocab_;
  const MergeRanks& ranks_;
  const bool ignore_merges_;
  std::vector<Symbol> symbols_;
  std::vector<Bigram> heap_;
};

}  // namespace

std::string_view byte_to_unicode(uint8_t byte) { return std::string_view(kByteText[byte].bytes, kByteText[byte].n); }

std::string encode_bytes(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (char c : raw) out.append(byte_to_unicode(static_cast<uint8_t>(c)));
  return out;
}

std::string decode_text(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const uint32_t cpt : utf8_to_cpts_lenient(text)) {
    if (cpt < kByteLevelEnd && kCptToByte[cpt] >= 0) {
      out += static_cast<char>(kCptToByte[cpt]);
      continue;
    }
    std::string utf8;
    append_utf8(utf8, cpt);
    out += "[UNK_BYTE_0x";
    for (char c : utf8) {
      char hex[3];
      std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned>(static_cast<uint8_t>(c)));
      out += hex;
    }
    out.append(text);
    out += ']';
  }
  return out;
}

void MergeRanks::add(std::string_view left, std::string_view right, int32_t rank) {
  if (map_.find(KeyView{left, right}) != map_.end()) return;
  map_.emplace(Key{std::string(left), std::string(right)}, rank);
}

int32_t MergeRanks::find(std::string_view left, std::string_view right) const {
  const auto it = map_.find(KeyView{left, right});
  return it == map_.end() ? -1 : it->second;
}

void tokenize_text(const Vocab& vocab, const PreTokenizer& pre, const MergeRanks& ranks, bool ignore_merges, std::string_view text,
                   std::vector<int32_t>& out) {
  Session session(vocab, ranks, ignore_merges);
  std::string encoded;
  for (const std::string& word : pre.split(text)) {
    encoded.clear();
    for (char c : word) encoded.append(byte_to_unicode(static_cast<uint8_t>(c)));
    session.tokenize_word(encoded, out);
  }
}

}  // namespace kvstash::bpe
