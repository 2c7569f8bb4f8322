// SPM tokenizer: a port of llama.cpp's llm_tokenizer_spm_session (src/llama-vocab.cpp).
#include "model/tokenizer_spm.h"

#include <algorithm>
#include <queue>

#include "model/vocab.h"

namespace kvstash::spm {
namespace {

// One run of bytes [offset, offset + n) of the text; n == 0 once merged into its left neighbour.
// prev/next link the live symbols (-1 = none). 64-bit indices: no limit on the text size.
struct Symbol {
  int64_t prev;
  int64_t next;
  size_t offset;
  size_t n;
};

struct Bigram {
  int64_t left;
  int64_t right;
  float score;
  size_t size;  // bytes of left + right when queued; a mismatch later means the entry is stale
};

// Max-heap order of llm_bigram_spm::comparator: highest score first, then the leftmost pair.
struct BigramLess {
  bool operator()(const Bigram& l, const Bigram& r) const {
    return (l.score < r.score) || (l.score == r.score && l.left > r.left);
  }
};

// llama.cpp unicode_len_utf8: length from the lead byte's high nibble only. Continuation
// bytes count as 1-byte symbols; a lead byte takes its following bytes whatever they are
// (clipped at the end of the text), which is how invalid UTF-8 is segmented.
size_t utf8_len(char lead) {
  static constexpr size_t kLookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLookup[static_cast<uint8_t>(lead) >> 4];
}

constexpr std::string_view kSpaceEscape = "\xe2\x96\x81";  // U+2581 '▁'

}  // namespace

std::string escape_whitespace(std::string_view text, bool add_space_prefix) {
  std::string out;
  out.reserve(text.size() + text.size() / 2 + kSpaceEscape.size());
  if (add_space_prefix) out += kSpaceEscape;
  for (char c : text) {
    if (c == ' ') {
      out += kSpaceEscape;
    } else {
      out += c;
    }
  }
  return out;
}

void tokenize_escaped(const Vocab& vocab, std::string_view text, std::vector<int32_t>& out) {
  if (text.empty()) return;

  // Split into UTF-8 characters.
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t offs = 0; offs < text.size();) {
    const size_t n = std::min(utf8_len(text[offs]), text.size() - offs);
    const auto index = static_cast<int64_t>(symbols.size());
    symbols.push_back({index - 1, offs + n == text.size() ? -1 : index + 1, offs, n});
    offs += n;
  }

  std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue;
  auto try_add_bigram = [&](int64_t left, int64_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    const std::string_view pair = text.substr(l.offset, l.n + r.n);  // r follows l directly
    const int32_t id = vocab.find_token(pair);
    if (id < 0) return;
    queue.push({left, right, vocab.token_score(id), pair.size()});
  };

  // Seed with every adjacent pair, then keep merging the best pair.
  for (size_t i = 1; i < symbols.size(); ++i) try_add_bigram(static_cast<int64_t>(i) - 1, static_cast<int64_t>(i));

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(bigram.left)];
    Symbol& right = symbols[static_cast<size_t>(bigram.right)];
    // Skip entries made stale by an earlier merge of either side.
    if (left.n == 0 || right.n == 0 || left.n + right.n != bigram.size) continue;

    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = bigram.left;

    try_add_bigram(left.prev, bigram.left);
    try_add_bigram(bigram.left, left.next);
  }

  // Resegment. llama.cpp also keeps a rev_merge map to split a final symbol that is not a
  // token back into its merge parts, but that branch is unreachable: a merged symbol's text
  // is always a token (the merge required it), and an unmerged single character that is not a
  // token is never a rev_merge key (those keys are token texts). So: token, or byte fallback.
  const int32_t unk = vocab.unk_id();
  for (int64_t i = 0; i != -1; i = symbols[static_cast<size_t>(i)].next) {
    const Symbol& sym = symbols[static_cast<size_t>(i)];
    const std::string_view piece = text.substr(sym.offset, sym.n);
    const int32_t id = vocab.find_token(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (char c : piece) {
      // llama.cpp throws here when there is no byte token; we fall back to unk, else drop.
      const int32_t byte_id = vocab.byte_to_token(static_cast<uint8_t>(c));
      if (byte_id >= 0) {
        out.push_back(byte_id);
      } else if (unk >= 0) {
        out.push_back(unk);
      }
    }
  }
}

}  // namespace kvstash::spm
