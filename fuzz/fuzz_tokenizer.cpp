// libFuzzer target: the tokenizers. Input: one selector byte, then the text.
//   bits 0-1: vocabulary (0 llama-spm: SPM; 1 gpt-2: BPE with clean_spaces; 2 deepseek-llm: BPE
//             with 2398 user-defined tokens; 3 stories260K: the test model's SPM vocabulary),
//             read from $KVSTASH_MODELS (default ../shared/models)
//   bit 2: add_special, bit 3: parse_special
//   bit 4: the rest is not text but token ids (little-endian u32, mapped to -4..n_vocab+3)
//          for detokenize alone
// Invariants, for any bytes: every id is in range; adding specials only adds the BOS/EOS ids. The exact round trips each tokenizer guarantees:
//  - BPE (any bytes): the pieces (token_to_piece, special = true) concatenate to the text's
//    lenient UTF-8 re-encoding (PreTokenizer::split), which is the text itself when it is valid
//    UTF-8; detokenize() returns that string unchanged when the vocabulary does not clean
//    spaces, and when it does but the string has none of the sequences the clean-up rewrites
//    (a space before ? ! . , or ').
//  - SPM (valid UTF-8): the text is escaped ("▁" + text, ' ' -> "▁") and the pieces unescape
//    every "▁", so the pieces concatenate to " " + text with each U+2581 read as a space, and
//    detokenize() drops that first space. With parse_special each raw fragment after a special
//    token gets its own leading space (llama.cpp's is_prev_special), which is dropped here the
//    same way. With add_special, detokenize(remove_special) drops the BOS and keeps the space
//    (llama.cpp's rule).
//  - detokenize of any ids (out-of-range ones contribute nothing) is the concatenation of
//    token_to_piece, less one leading space of the first id's piece when the vocabulary adds a
//    space prefix, unless the vocabulary cleans spaces (then it only must not crash).
#include <string>
#include <string_view>
#include <vector>

#include "core/le.h"
#include "fuzz_support.h"
#include "gguf/gguf_reader.h"
#include "model/pretokenizer.h"
#include "model/vocab.h"
#include "server/json_io.h"

using namespace kvstash;

namespace {

const Vocab& vocab(int which) {
  static const char* kFiles[4] = {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf", "stories260K.gguf"};
  static std::unique_ptr<Vocab> loaded[4];
  if (!loaded[which]) {
    auto f = GgufFile::open(fuzz::shared_model_path(kFiles[which]));
    FUZZ_CHECK(f.is_ok(), f.status().to_string());
    auto v = Vocab::from_gguf(**f);
    FUZZ_CHECK(v.is_ok(), v.status().to_string());
    loaded[which] = std::make_unique<Vocab>(std::move(v).value());
  }
  return *loaded[which];
}

std::string lenient_utf8(std::string_view s) {
  std::string out;
  for (uint32_t cpt : utf8_to_cpts_lenient(s)) append_utf8(out, cpt);
  return out;
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

bool is_special(const Vocab& v, int32_t id) {
  const TokenType t = v.token_type(id);
  return v.is_control(id) || t == TokenType::Unknown || v.is_user_defined(id);
}

void check_bpe(const Vocab& v, const std::string& text, const std::vector<int32_t>& ids, bool add_special) {
  std::string pieces;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (add_special && v.add_bos() && i == 0) continue;
    pieces += v.token_to_piece(ids[i], true);
  }
  const std::string want = lenient_utf8(text);
  FUZZ_CHECK(pieces == want, "BPE pieces do not concatenate to the text");
  if (is_valid_utf8(text)) FUZZ_CHECK(want == text, "lenient re-encoding changed valid UTF-8");
  const std::vector<int32_t> body(ids.begin() + (add_special && v.add_bos() ? 1 : 0), ids.end());
  const std::string detok = v.detokenize(body, true);
  bool rewritten = false;
  for (size_t i = 0; i + 1 < pieces.size() && !rewritten; ++i)
    rewritten = pieces[i] == ' ' && std::string_view("?!.,'").find(pieces[i + 1]) != std::string_view::npos;
  if (!v.clean_spaces() || !rewritten) FUZZ_CHECK(detok == pieces, "BPE detokenize differs from the pieces");
}

void check_spm(const Vocab& v, const std::string& text, const std::vector<int32_t>& ids, bool add_special, bool parse_special) {
  const std::string spaced = replace_all(text, "\xe2\x96\x81", " ");
  const size_t first = add_special && v.add_bos() ? 1 : 0;
  // Pieces with the space the tokenizer put before each raw fragment removed.
  std::string got;
  bool fragment_start = true;
  for (size_t i = first; i < ids.size(); ++i) {
    const std::string piece = v.token_to_piece(ids[i], true);
    if (parse_special && is_special(v, ids[i]) && v.token_text(ids[i]) == piece) {
      got += piece;
      fragment_start = true;
      continue;
    }
    FUZZ_CHECK(!fragment_start || (!piece.empty() && piece[0] == ' '), "a raw fragment does not start with the prefix space");
    got.append(piece, fragment_start ? 1 : 0);
    fragment_start = false;
  }
  FUZZ_CHECK(got == spaced, "SPM pieces differ from the text");
  if (parse_special) return;
  // detokenize: the first piece's space is dropped; with remove_special the BOS goes and the
  // space stays.
  const std::string detok = v.detokenize(std::vector<int32_t>(ids.begin() + first, ids.end()), true);
  FUZZ_CHECK(detok == spaced, "SPM detokenize(tokenize(text)) differs from the text");
  if (first) {
    const std::string kept = v.detokenize(ids, true, /*remove_special=*/true);
    FUZZ_CHECK(kept == (text.empty() ? "" : " " + spaced), "SPM detokenize(remove_special) differs from ' ' + text");
  }
}

void check_detokenize_ids(const Vocab& v, const uint8_t* p, size_t n) {
  std::vector<int32_t> ids;
  const int64_t range = int64_t(v.n_tokens()) + 8;
  for (size_t i = 0; i + 4 <= n; i += 4) ids.push_back(static_cast<int32_t>(int64_t(load_le<uint32_t>(p + i) % range) - 4));
  for (bool special : {false, true}) {
    std::string want;
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string piece = v.token_to_piece(ids[i], special);
      want.append(piece, i == 0 && v.add_space_prefix() && !piece.empty() && piece[0] == ' ' ? 1 : 0);
    }
    const std::string got = v.detokenize(ids, special);
    if (!v.clean_spaces()) FUZZ_CHECK(got == want, "detokenize differs from the concatenated pieces");
    (void)v.detokenize(ids, special, /*remove_special=*/true);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Vocab& v = vocab(data[0] & 3);
  const bool add_special = data[0] & 4, parse_special = data[0] & 8;
  if (data[0] & 16) {
    check_detokenize_ids(v, data + 1, size - 1);
    return 0;
  }
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);

  const std::vector<int32_t> ids = v.tokenize(text, add_special, parse_special);
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < v.n_tokens(), "token id " + std::to_string(id) + " out of range");
  if (add_special) {
    std::vector<int32_t> plain = v.tokenize(text, false, parse_special);
    if (v.add_bos()) plain.insert(plain.begin(), v.bos_id());
    if (v.add_eos()) plain.push_back(v.eos_id());
    FUZZ_CHECK(plain == ids, "add_special changed more than the BOS/EOS ids");
  }
  FUZZ_CHECK(!v.add_eos(), "these vocabularies add no EOS; the checks below assume it");
  if (v.kind() == VocabKind::Bpe) {
    check_bpe(v, text, ids, add_special);
  } else if (is_valid_utf8(text)) {
    check_spm(v, text, ids, add_special, parse_special);
  } else {
    (void)v.detokenize(ids, true);
  }
  return 0;
}
