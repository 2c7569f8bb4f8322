// Vocab + BPE tokenizer: llama.cpp's gpt-2 and deepseek-llm vocab test vectors, detokenize round
// trips, the pre-tokenizer rules of each tokenizer.ggml.pre (llama-3 on a synthetic GGUF), the
// byte-level encoding, special tokens, and bad inputs (random bytes, malformed merges, unknown
// pre-tokenizers).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gguf/gguf_reader.h"
#include "gguf/gguf_writer.h"
#include "model/pretokenizer.h"
#include "model/tokenizer_bpe.h"
#include "model/vocab.h"
#include "test_paths.h"
#include "vocab_vectors.h"

namespace kvstash {
namespace {

using Words = std::vector<std::string>;



using test::read_all;
using test::read_cases;
using test::VocabCase;

std::string printable(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20 || c == 0x7F) o += "\\x" + std::to_string(c);
    else o += static_cast<char>(c);
  }
  return "'" + o + "'";
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}

// The fixtures are large; each is loaded once per process.
const Vocab& shared_vocab(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Vocab>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    auto f = GgufFile::open(test::model_path(name));
    if (!f.is_ok()) throw std::runtime_error(f.status().to_string());
    auto v = Vocab::from_gguf(**f);
    if (!v.is_ok()) throw std::runtime_error(v.status().to_string());
    it = cache.emplace(name, std::make_unique<Vocab>(std::move(v).value())).first;
  }
  return *it->second;
}

const std::vector<VocabCase>& shared_cases(const std::string& name, size_t* n_out_lines) {
  static std::map<std::string, std::pair<std::vector<VocabCase>, size_t>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    size_t n = 0;
    auto cases = read_cases(test::model_path(name), &n);
    it = cache.emplace(name, std::make_pair(std::move(cases), n)).first;
  }
  *n_out_lines = it->second.second;
  return it->second.first;
}

std::string concat_pieces(const Vocab& v, const std::vector<int32_t>& ids, bool special = false) {
  std::string s;
  for (int32_t id : ids) s += v.token_to_piece(id, special);
  return s;
}

std::string utf8_of(uint32_t c) {
  std::string enc;
  if (c < 0x80) {
    enc += static_cast<char>(c);
  } else if (c < 0x800) {
    enc += static_cast<char>(0xC0 | (c >> 6));
    enc += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    enc += static_cast<char>(0xE0 | (c >> 12));
    enc += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    enc += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    enc += static_cast<char>(0xF0 | (c >> 18));
    enc += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    enc += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    enc += static_cast<char>(0x80 | (c & 0x3F));
  }
  return enc;
}

// Independent reference for how llama.cpp reads bytes (unicode_cpts_from_utf8 followed by
// unicode_cpt_to_utf8): a byte that does not start a sequence llama.cpp accepts (lead byte with
// enough continuation bytes) becomes U+FFFD; overlong forms are re-encoded in their shortest
// form; surrogates stay.
// (llama.cpp throws for a 4-byte form above U+10FFFF; kvstash reads its lead byte as invalid.)
std::string llama_sanitize(const std::string& in) {
  std::string out;
  size_t i = 0;
  auto is_cont = [&](size_t k) { return k < in.size() && (static_cast<uint8_t>(in[k]) & 0xC0) == 0x80; };
  auto put = [&](uint32_t c) { out += utf8_of(c); };
  while (i < in.size()) {
    const auto b = static_cast<uint8_t>(in[i]);
    size_t len = 0;
    uint32_t c = 0;
    if (b < 0x80) len = 1, c = b;
    else if (b >= 0xC0 && b < 0xE0) len = 2, c = b & 0x1F;
    else if (b >= 0xE0 && b < 0xF0) len = 3, c = b & 0x0F;
    else if (b >= 0xF0 && b < 0xF8) len = 4, c = b & 0x07;
    bool ok = len > 0;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = is_cont(i + k);
      if (ok) c = (c << 6) | (static_cast<uint8_t>(in[i + k]) & 0x3F);
    }
    if (ok && c > 0x10FFFF) ok = false;
    if (!ok) {
      put(0xFFFD);
      ++i;
    } else {
      put(c);
      i += len;
    }
  }
  return out;
}

// ---- llama.cpp's vectors: every text of both fixtures ----

class BpeFixtureTest : public ::testing::TestWithParam<const char*> {
 protected:
  const Vocab& vocab() const { return shared_vocab(GetParam()); }
  const std::vector<VocabCase>& cases(size_t* n_out_lines) const { return shared_cases(GetParam(), n_out_lines); }
};

INSTANTIATE_TEST_SUITE_P(Fixtures, BpeFixtureTest, ::testing::Values("ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).find("gpt-2") != std::string::npos ? std::string("Gpt2")
                                                                                              : std::string("DeepseekLlm");
                         });

TEST_P(BpeFixtureTest, MatchesLlamaCppVectors) {
  size_t n_out_lines = 0;
  const std::vector<VocabCase>& cs = cases(&n_out_lines);
  ASSERT_EQ(cs.size(), n_out_lines) << "each .inp text needs one .out line";
  ASSERT_EQ(cs.size(), 46u);
  EXPECT_EQ(cs[2].text, "");
  EXPECT_TRUE(cs[2].ids.empty());
  size_t n_match = 0;
  for (const VocabCase& c : cs) {
    const std::vector<int32_t> got = vocab().tokenize(c.text, /*add_special=*/false, /*parse_special=*/false);
    EXPECT_EQ(got, c.ids) << "text " << printable(c.text);
    n_match += got == c.ids;
  }
  EXPECT_EQ(n_match, 46u);
}

// Byte-level BPE loses nothing: the pieces of every vector concatenate to its text. detokenize()
// adds llama.cpp's clean_spaces pass, on for gpt-2 and off for deepseek-llm: of the 46 texts it
// changes exactly the two gpt-2 ones with " ?" (" 😁 ?" -> " 😁?").
TEST_P(BpeFixtureTest, DetokenizeRoundTrip) {
  size_t n_out_lines = 0;
  const Vocab& v = vocab();
  const bool is_gpt2 = std::string(GetParam()).find("gpt-2") != std::string::npos;
  EXPECT_EQ(v.clean_spaces(), is_gpt2);
  int n_cleaned = 0;
  for (const VocabCase& c : cases(&n_out_lines)) {
    EXPECT_EQ(concat_pieces(v, c.ids), c.text) << "text " << printable(c.text);
    const std::vector<int32_t> ids = v.tokenize(c.text, false);
    EXPECT_EQ(concat_pieces(v, ids), c.text) << "text " << printable(c.text);
    std::string expect = c.text;
    if (v.clean_spaces() && c.text.find(" ?") != std::string::npos) {
      expect = replace_all(c.text, " ?", "?");  // no other clean-up rule fires on these texts
      ++n_cleaned;
    }
    EXPECT_EQ(v.detokenize(ids), expect) << "text " << printable(c.text);
  }
  EXPECT_EQ(n_cleaned, is_gpt2 ? 2 : 0);
}

// Every byte string round-trips through the vocab the way llama.cpp reads it: valid UTF-8 exactly,
// invalid bytes as U+FFFD (llama.cpp's unicode_cpts_from_utf8; it does not keep the raw byte, so
// neither do we), overlong forms re-encoded. Ids are always in range; nothing crashes.
TEST_P(BpeFixtureTest, ArbitraryBytesRoundTripAsLlamaCppReadsThem) {
  const Vocab& v = vocab();
  auto round_trip = [&](const std::string& bytes, bool parse_special) {
    const std::vector<int32_t> ids = v.tokenize(bytes, true, parse_special);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < v.n_tokens()) << printable(bytes);
    const std::vector<int32_t> plain = v.tokenize(bytes, false, parse_special);
    return concat_pieces(v, plain, /*special=*/true);
  };
  EXPECT_EQ(round_trip("\xFF", false), "\xEF\xBF\xBD");
  EXPECT_EQ(round_trip("a\x80" "b", false), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(round_trip("\xE2\x82", false), "\xEF\xBF\xBD\xEF\xBF\xBD");  // truncated euro sign
  EXPECT_EQ(round_trip("\xE2\x82\xAC", false), "\xE2\x82\xAC");
  EXPECT_EQ(round_trip(std::string("\xC0\x80", 2), false), std::string(1, '\0'));  // overlong NUL
  EXPECT_EQ(round_trip("\xC1\x81", false), "A");                                   // overlong 'A'
  EXPECT_EQ(round_trip("\xED\xA0\x80", false), "\xED\xA0\x80");                    // a surrogate stays
  EXPECT_EQ(round_trip("\xF4\x90\x80\x80", false), replace_all("XXXX", "X", "\xEF\xBF\xBD"));  // > U+10FFFF
  EXPECT_EQ(round_trip("\xF8\x88\x80\x80\x80", false), replace_all("XXXXX", "X", "\xEF\xBF\xBD"));

  std::mt19937 rng(1234);
  // Byte soup biased towards UTF-8 lead/continuation bytes, whitespace, digits and specials.
  const std::string alphabet = std::string("ab Z9'\n\t?.") + "\x80\xBF\xC3\xB8\xE2\x96\xF0\x9F\xED\xA0\xC0\xFF\xF4\x90";
  std::uniform_int_distribution<int> any_byte(0, 255), pick(0, static_cast<int>(alphabet.size()) - 1), coin(0, 1), len(0, 48);
  for (int iter = 0; iter < 600; ++iter) {
    std::string s;
    const int n = len(rng);
    for (int i = 0; i < n; ++i) s += coin(rng) ? static_cast<char>(any_byte(rng)) : alphabet[pick(rng)];
    if (iter % 50 == 0) s += v.token_text(v.eos_id());  // a control token's text
    const std::string expect = llama_sanitize(s);
    EXPECT_EQ(round_trip(s, false), expect) << printable(s);
    EXPECT_EQ(round_trip(s, true), expect) << printable(s);
    if (!v.clean_spaces()) {
      EXPECT_EQ(v.detokenize(v.tokenize(s, false)), expect) << printable(s);
    }
  }
  // Valid UTF-8 from all planes (whitespace, CJK, U+3000, combining marks, digits, emoji).
  const std::vector<uint32_t> pool = {' ', '\n', '\t', 'a', 'Z', '7', '\'', '!', 0xA0, 0x85, 0x3000, 0x2009, 0x180E, 0x4E2D, 0xAC00,
                                      0x0301, 0x0663, 0x00BD, 0x1F999, 0x200D, 0xFE0F, 0x10400, 0x00FC, 0xD7FF, 0xE000, 0x10FFFF};
  std::uniform_int_distribution<size_t> pick_cpt(0, pool.size() - 1);
  for (int iter = 0; iter < 300; ++iter) {
    std::string s;
    const int n = len(rng);
    for (int i = 0; i < n; ++i) s += utf8_of(pool[pick_cpt(rng)]);
    EXPECT_EQ(llama_sanitize(s), s);
    EXPECT_EQ(round_trip(s, false), s) << printable(s);
    if (!v.clean_spaces()) {
      EXPECT_EQ(v.detokenize(v.tokenize(s, false)), s) << printable(s);
    }
  }
}

// 4000+ tokens of mixed text. The budget is for sanitizer builds on a shared machine.
TEST_P(BpeFixtureTest, LongPromptIsFast) {
  size_t n_out_lines = 0;
  std::string text;
  for (const VocabCase& c : cases(&n_out_lines)) text += c.text + "\n";
  while (text.size() < 20000) text += text;
  const Vocab& v = vocab();
  v.tokenize(text.substr(0, 1000), false);  // warm up (first use of the allocator pools)
  double best_ms = 1e9;
  std::vector<int32_t> ids;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = v.tokenize(text, true);
    best_ms = std::min(best_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  ASSERT_GE(ids.size(), 4000u);
  std::printf("[%s] tokenized %zu bytes into %zu tokens in %.2f ms\n", GetParam(), text.size(), ids.size(), best_ms);
  EXPECT_LT(best_ms, 100.0);
  EXPECT_TRUE(concat_pieces(v, ids) == text);
}

// ---- gpt-2 ----

TEST(Gpt2Vocab, Metadata) {
  const Vocab& v = shared_vocab("ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(v.kind(), VocabKind::Bpe);
  EXPECT_EQ(v.pre_tokenizer().kind(), PreTokenizerKind::Gpt2);
  EXPECT_EQ(v.n_tokens(), 50257);
  EXPECT_EQ(v.n_merges(), 50000u);
  EXPECT_EQ(v.bos_id(), 50256);
  EXPECT_EQ(v.eos_id(), 50256);
  EXPECT_EQ(v.unk_id(), -1);
  EXPECT_EQ(v.eot_id(), 50256);  // "<|endoftext|>", found by text as llama.cpp
  EXPECT_FALSE(v.add_bos());
  EXPECT_FALSE(v.add_eos());
  EXPECT_FALSE(v.add_space_prefix());
  EXPECT_TRUE(v.clean_spaces());
  EXPECT_FALSE(v.ignore_merges());
  EXPECT_EQ(v.nl_id(), 198);  // "Ċ"
  EXPECT_EQ(v.byte_to_token(' '), 220);
  EXPECT_EQ(v.byte_to_token('\n'), 198);
  EXPECT_EQ(v.token_text(220), "\xC4\xA0");  // "Ġ"
  EXPECT_TRUE(v.is_eog(50256));
  EXPECT_TRUE(v.is_control(50256));
  // Hand-checked vector lines: "Hello world" is "Hello" + "Ġworld"; " Hello world" starts with
  // "ĠHello"; '   Hello' is two lone spaces (\s+(?!\S) leaves the last one to " Hello").
  EXPECT_EQ(v.token_text(15496), "Hello");
  EXPECT_EQ(v.token_text(995), "\xC4\xA0world");
  EXPECT_EQ(v.token_text(18435), "\xC4\xA0Hello");
  EXPECT_EQ(v.tokenize("Hello world", false), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(v.tokenize(" Hello world", false), (std::vector<int32_t>{18435, 995}));
  EXPECT_EQ(v.tokenize("   Hello", false), (std::vector<int32_t>{220, 220, 18435}));
  EXPECT_EQ(v.tokenize("Hello world", true), (std::vector<int32_t>{15496, 995}));  // no BOS for gpt-2
}

TEST(Gpt2Vocab, TokenToPieceAndCleanSpaces) {
  const Vocab& v = shared_vocab("ggml-vocab-gpt-2.gguf");
  for (int b = 0; b < 256; ++b) {
    const int32_t id = v.byte_to_token(static_cast<uint8_t>(b));
    ASSERT_GE(id, 0) << b;
    EXPECT_EQ(v.token_to_piece(id), std::string(1, static_cast<char>(b))) << b;
  }
  EXPECT_EQ(v.token_to_piece(995), " world");
  EXPECT_EQ(v.token_to_piece(50256), "");
  EXPECT_EQ(v.token_to_piece(50256, true), "<|endoftext|>");
  EXPECT_EQ(v.token_to_piece(-1), "");
  EXPECT_EQ(v.token_to_piece(50257, true), "");
  EXPECT_EQ(v.detokenize({15496, 50256, 995}), "Hello world");
  EXPECT_EQ(v.detokenize({15496, 50256, 995}, true), "Hello<|endoftext|> world");
  // llama.cpp's clean_spaces passes (expected strings from a literal port of its three loops).
  auto rt = [&](const std::string& s) { return v.detokenize(v.tokenize(s, false)); };
  EXPECT_EQ(rt("Hi , there . Yes ! Why ?"), "Hi, there. Yes! Why?");
  EXPECT_EQ(rt("a ' b"), "a'b");
  EXPECT_EQ(rt("a ' ' b"), "a'' b");  // the blanked space hides the second " '"
  EXPECT_EQ(rt("I 'm here"), "I'm here");
  EXPECT_EQ(rt("x 'll y 've z 're"), "x 'll y've z're");
  EXPECT_EQ(rt("it 's 't 'd"), "it's 't 'd");
  EXPECT_EQ(rt(" ?"), "?");
  EXPECT_EQ(rt(""), "");
}

TEST(Gpt2Vocab, ParseSpecial) {
  const Vocab& v = shared_vocab("ggml-vocab-gpt-2.gguf");
  const std::string text = "a<|endoftext|>b";
  const std::vector<int32_t> plain = v.tokenize(text, false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256), 0);
  EXPECT_EQ(v.detokenize(plain), text);
  std::vector<int32_t> expect = v.tokenize("a", false);
  expect.push_back(50256);
  const std::vector<int32_t> b = v.tokenize("b", false);
  expect.insert(expect.end(), b.begin(), b.end());
  EXPECT_EQ(v.tokenize(text, false, true), expect);
  EXPECT_EQ(v.tokenize("<|endoftext|><|endoftext|>", true, true), (std::vector<int32_t>{50256, 50256}));
}

// ---- deepseek-llm ----

TEST(DeepseekLlmVocab, Metadata) {
  const Vocab& v = shared_vocab("ggml-vocab-deepseek-llm.gguf");
  EXPECT_EQ(v.kind(), VocabKind::Bpe);
  EXPECT_EQ(v.pre_tokenizer().kind(), PreTokenizerKind::DeepseekLlm);
  EXPECT_EQ(v.n_tokens(), 102400);
  EXPECT_EQ(v.n_merges(), 99757u);
  EXPECT_EQ(v.bos_id(), 100000);
  EXPECT_EQ(v.eos_id(), 100001);
  EXPECT_EQ(v.pad_id(), 100001);
  EXPECT_TRUE(v.add_bos());
  EXPECT_FALSE(v.add_eos());
  EXPECT_FALSE(v.clean_spaces());
  EXPECT_EQ(v.nl_id(), 185);
  EXPECT_TRUE(v.is_eog(100001));
  // Hand-checked vector line: 'ied 4 ½ months' -> "ied", " ", "4", " ", "½", " months": the
  // letter regex takes "ied" and " months", \p{N}+ takes "4" and "½", the spaces stay alone.
  EXPECT_EQ(v.tokenize("ied 4 \xC2\xBD months", false), (std::vector<int32_t>{1052, 207, 19, 207, 19109, 4223}));
  EXPECT_EQ(v.token_text(207), "\xC4\xA0");
  EXPECT_EQ(v.token_text(19), "4");
  EXPECT_EQ(v.token_text(19109), "\xC3\x82\xC2\xBD");  // "Â½": the bytes C2 BD, byte-level
  EXPECT_EQ(v.token_text(4223), "\xC4\xA0months");
  EXPECT_EQ(v.tokenize("Hello world", true), (std::vector<int32_t>{100000, 17464, 1843}));
  EXPECT_EQ(v.detokenize({100000, 17464, 1843}, false, /*remove_special=*/true), "Hello world");
}

TEST(DeepseekLlmVocab, UserDefinedAndControlTokens) {
  const Vocab& v = shared_vocab("ggml-vocab-deepseek-llm.gguf");
  // "ü" is a user-defined token (100014): matched in raw text even without parse_special.
  EXPECT_TRUE(v.is_user_defined(100014));
  EXPECT_EQ(v.tokenize("F\xC3\xBChrer", false), (std::vector<int32_t>{37, 100014, 71, 6245}));
  EXPECT_EQ(v.token_to_piece(100014), "\xC3\xBC");
  const std::string bos_text = v.token_text(100000);
  EXPECT_EQ(bos_text, "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>");
  EXPECT_EQ(v.tokenize(bos_text + "Hello", true, true), (std::vector<int32_t>{100000, 100000, 17464}));
  const std::vector<int32_t> plain = v.tokenize(bos_text, false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 100000), 0);
  EXPECT_EQ(v.detokenize(plain), bos_text);
}

// ---- pre-tokenizers, called directly ----

Words split(PreTokenizerKind kind, const std::string& text) {
  auto p = PreTokenizer::create(kind);
  if (!p.is_ok()) throw std::runtime_error(p.status().to_string());
  return p->split(text);
}

TEST(PreTokenizer, RegexListsAreLlamaCpps) {
  EXPECT_EQ(pre_tokenizer_regexes(PreTokenizerKind::Gpt2),
            (Words{"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"}));
  EXPECT_EQ(pre_tokenizer_regexes(PreTokenizerKind::Llama3),
            (Words{"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                   "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}));
  const Words& ds = pre_tokenizer_regexes(PreTokenizerKind::DeepseekLlm);
  ASSERT_EQ(ds.size(), 6u);
  EXPECT_EQ(ds[0], "[\r\n]");
  EXPECT_EQ(ds[1].substr(0, 12), "\\s?[A-Za-z\xC2\xB5");
  EXPECT_NE(ds[1].find("\xE1\xBD\x9F-\xE1\xBD\xBD"), std::string::npos);  // U+1F5F-U+1F7D, not NFC's U+03CE
  EXPECT_NE(ds[1].find("\xE2\x84\xA4\xE2\x84\xA6\xE2\x84\xA8\xE2\x84\xAA-"), std::string::npos);  // U+2126 Ohm, U+212A Kelvin
  EXPECT_EQ(ds[2], "\\s?[!-/:-~\xEF\xBC\x81-\xEF\xBC\x8F\xEF\xBC\x9A-\xEF\xBD\x9E\xE2\x80\x98-\xE2\x80\x9F\xE3\x80\x80-\xE3\x80\x82]+");
  EXPECT_EQ(ds[3], "\\s+$");
  EXPECT_EQ(ds[4], "[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+");
  EXPECT_EQ(ds[5], "\\p{N}+");
  EXPECT_EQ(pre_tokenizer_regexes(PreTokenizerKind::Default),
            (Words{"[\\p{P}\\$\\+<=>\\^~\\|]+", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)", "\\p{N}+",
                   "[0-9][0-9][0-9]"}));
  for (auto kind : {PreTokenizerKind::Default, PreTokenizerKind::Gpt2, PreTokenizerKind::Llama3, PreTokenizerKind::DeepseekLlm}) {
    EXPECT_TRUE(PreTokenizer::create(kind).is_ok());
  }
}

TEST(PreTokenizer, Llama3Rules) {
  const auto L3 = PreTokenizerKind::Llama3;
  // Numbers in groups of 1-3 digits (any script's digits).
  EXPECT_EQ(split(L3, "12345"), (Words{"123", "45"}));
  EXPECT_EQ(split(L3, "1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(split(L3, "\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6"), (Words{"\xD9\xA3\xD9\xA4\xD9\xA5", "\xD9\xA6"}));  // Arabic-Indic
  EXPECT_EQ(split(L3, "x12345y"), (Words{"x", "123", "45", "y"}));
  // Contractions, case-insensitive.
  EXPECT_EQ(split(L3, "I'M"), (Words{"I", "'M"}));
  EXPECT_EQ(split(L3, "DON'T we'Ve they'RE"), (Words{"DON", "'T", " we", "'Ve", " they", "'RE"}));
  EXPECT_EQ(split(L3, "you'll"), (Words{"you", "'ll"}));
  // One non-letter, non-digit, non-newline character may lead a word; punctuation runs take
  // trailing newlines; whitespace before a newline stays with it.
  EXPECT_EQ(split(L3, "hello world"), (Words{"hello", " world"}));
  EXPECT_EQ(split(L3, "a\tb"), (Words{"a", "\tb"}));
  EXPECT_EQ(split(L3, "$x"), (Words{"$x"}));
  EXPECT_EQ(split(L3, "ok?!\n\nNext"), (Words{"ok", "?!\n\n", "Next"}));
  EXPECT_EQ(split(L3, "x  \n  y"), (Words{"x", "  \n", " ", " y"}));
  EXPECT_EQ(split(L3, "hello   "), (Words{"hello", "   "}));
  EXPECT_EQ(split(L3, "  hello"), (Words{" ", " hello"}));
  EXPECT_EQ(split(L3, "na\xC3\xAFve caf\xC3\xA9"), (Words{"na\xC3\xAFve", " caf\xC3\xA9"}));
  // Non-ASCII whitespace is \s (U+00A0 may lead a word like any non-letter).
  EXPECT_EQ(split(L3, "a\xC2\xA0" "b"), (Words{"a", "\xC2\xA0" "b"}));
  EXPECT_EQ(split(L3, "a\xE3\x80\x80\xE3\x80\x80" "b"), (Words{"a", "\xE3\x80\x80", "\xE3\x80\x80" "b"}));
  EXPECT_EQ(split(L3, ""), Words{});
}

TEST(PreTokenizer, Gpt2Rules) {
  const auto G = PreTokenizerKind::Gpt2;
  EXPECT_EQ(split(G, "12345"), (Words{"12345"}));
  EXPECT_EQ(split(G, "I'm"), (Words{"I", "'m"}));
  EXPECT_EQ(split(G, "I'M"), (Words{"I", "'", "M"}));  // case-sensitive contractions
  EXPECT_EQ(split(G, "Hello, world!"), (Words{"Hello", ",", " world", "!"}));
  EXPECT_EQ(split(G, "   Hello"), (Words{"  ", " Hello"}));
  EXPECT_EQ(split(G, "\n\nfoo"), (Words{"\n", "\n", "foo"}));  // a lone \s before \S stays unmatched
  EXPECT_EQ(split(G, "a \t b"), (Words{"a", " \t", " b"}));
  EXPECT_EQ(split(G, "a\xC2\xA0" "b"), (Words{"a", "\xC2\xA0", "b"}));  // only ' ' may lead a word
}

TEST(PreTokenizer, DeepseekLlmRules) {
  const auto D = PreTokenizerKind::DeepseekLlm;
  EXPECT_EQ(split(D, "ied 4 \xC2\xBD months"), (Words{"ied", " ", "4", " ", "\xC2\xBD", " months"}));
  EXPECT_EQ(split(D, "12345"), (Words{"12345"}));
  EXPECT_EQ(split(D, "Hello, y'all!"), (Words{"Hello", ",", " y", "'", "all", "!"}));
  EXPECT_EQ(split(D, "a\nb"), (Words{"a", "\n", "b"}));
  EXPECT_EQ(split(D, "x  "), (Words{"x", "  "}));
  // U+3000 lies in the CJK class, but llama.cpp turns non-ASCII whitespace into 0x0B before any
  // regex sees it, so it stays apart (a plain PCRE2 run would glue "你\u3000好" together).
  EXPECT_EQ(split(D, "\xE4\xBD\xA0\xE3\x80\x80\xE5\xA5\xBD"), (Words{"\xE4\xBD\xA0", "\xE3\x80\x80", "\xE5\xA5\xBD"}));
  // Each regex splits the pieces of the previous one: the letter regex keeps "café" whole, but
  // the punctuation class ":-~" covers the ASCII letters, so the next regex cuts "caf" off.
  EXPECT_EQ(split(D, "caf\xC3\xA9"), (Words{"caf", "\xC3\xA9"}));
  EXPECT_EQ(split(D, " C\xE1\xBB\xAD" "a"), (Words{" C", "\xE1\xBB\xAD", "a"}));  // " Cửa"
}

TEST(PreTokenizer, DefaultRules) {
  // llama.cpp's fallback list (for "default" or no tokenizer.ggml.pre), hand-traced: punctuation
  // and $+<=>^~| runs, then the gpt-2 regex, then digit runs, then digit triples.
  EXPECT_EQ(split(PreTokenizerKind::Default, "Hello, world! 1234 $x"),
            (Words{"Hello", ",", " world", "!", " ", "123", "4", " ", "$", "x"}));
}

// Long whitespace runs stay linear. deepseek's "\s+$", searched as written, is quadratic in the
// length of a run that does not end its piece (35 s for 100k spaces before a digit, -O2).
TEST(PreTokenizer, LongWhitespaceRunsAreLinear) {
  const std::string spaces(100000, ' ');
  for (auto kind : {PreTokenizerKind::Default, PreTokenizerKind::Gpt2, PreTokenizerKind::Llama3, PreTokenizerKind::DeepseekLlm}) {
    auto p = PreTokenizer::create(kind);
    ASSERT_TRUE(p.is_ok());
    const auto t0 = std::chrono::steady_clock::now();
    const Words before_digit = p->split(spaces + "1");
    const Words trailing = p->split("1" + spaces);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(ms, 2000.0) << "kind " << static_cast<int>(kind);
    std::string joined;
    for (const std::string& w : before_digit) joined += w;
    EXPECT_EQ(joined, spaces + "1");
    EXPECT_EQ(trailing, (Words{"1", spaces}));
  }
  EXPECT_EQ(split(PreTokenizerKind::DeepseekLlm, spaces + "1"), (Words{spaces, "1"}));
  EXPECT_EQ(split(PreTokenizerKind::DeepseekLlm, "x\t \t"), (Words{"x", "\t \t"}));  // "\s+$" at the end
}

TEST(PreTokenizer, SharedAcrossThreads) {
  auto p = PreTokenizer::create(PreTokenizerKind::Llama3);
  ASSERT_TRUE(p.is_ok());
  const PreTokenizer& pre = p.value();
  const Words expect = pre.split("Hello, world! 12345 I'M here\n");
  std::vector<std::thread> threads;
  std::atomic<int> n_bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (pre.split("Hello, world! 12345 I'M here\n") != expect) ++n_bad;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(n_bad.load(), 0);
}

TEST(PreTokenizer, InvalidUtf8IsReadAsLlamaCppReadsIt) {
  // 0xFF reads as U+FFFD, a non-letter that may lead a llama-3 word; "\xC0\x80" reads as NUL.
  const Words w = split(PreTokenizerKind::Llama3, "ab\xFF" "cd\xC0\x80");
  EXPECT_EQ(w, (Words{"ab", "\xEF\xBF\xBD" "cd", std::string(1, '\0')}));
  EXPECT_EQ(split(PreTokenizerKind::Gpt2, "\xED\xA0\x80x"), (Words{"\xED\xA0\x80", "x"}));  // surrogate: "other"
}

// ---- llama-bpe (llama 3) on a synthetic GGUF ----

const std::string kG = "\xC4\xA0";  // "Ġ", byte-level space
const std::string kC = "\xC4\x8A";  // "Ċ", byte-level newline

struct TinyBpe {
  std::string pre = "llama-bpe";
  std::vector<std::string> tokens = {"<|begin_of_text|>", "<|end_of_text|>", kG, kC, "h", "e", "l", "o", "he", "ll", "hello",
                                     kG + "hello", "1", "2", "3", "4", "5", "12", "123", "45", "'", "M", "'M", "I", "a", "aa",
                                     "b", "c", "ab", "bc", "x", "y"};
  std::vector<std::string> merges = {"h e", "l l", "1 2", "12 3", "4 5", "' M", "a a", "b c", "a b", kG + " hello"};
  std::vector<int32_t> types;  // empty: the two specials are control, the rest normal
  std::function<void(GgufWriter&)> extra;
  bool with_merges = true;
  uint32_t bos_id = 0;
};

std::vector<uint8_t> tiny_bpe_bytes(const TinyBpe& t) {
  GgufWriter w;
  w.add_string("tokenizer.ggml.model", "gpt2");
  if (!t.pre.empty()) w.add_string("tokenizer.ggml.pre", t.pre);
  w.add_string_array("tokenizer.ggml.tokens", t.tokens);
  std::vector<int32_t> types = t.types;
  if (types.empty()) {
    types.assign(t.tokens.size(), 1);
    types[0] = types[1] = 3;
  }
  w.add_i32_array("tokenizer.ggml.token_type", types);
  if (t.with_merges) w.add_string_array("tokenizer.ggml.merges", t.merges);
  w.add_u32("tokenizer.ggml.bos_token_id", t.bos_id);
  w.add_u32("tokenizer.ggml.eos_token_id", 1);
  if (t.extra) t.extra(w);
  return w.to_bytes();
}

Result<Vocab> vocab_from(const std::vector<uint8_t>& bytes) {
  auto f = GgufFile::from_buffer(bytes.data(), bytes.size());
  if (!f.is_ok()) return f.status();
  return Vocab::from_gguf(**f);
}

void expect_error(const Result<Vocab>& r, StatusCode code, const std::string& needle) {
  ASSERT_FALSE(r.is_ok()) << "expected an error mentioning " << needle;
  EXPECT_EQ(r.status().code(), code) << r.status().to_string();
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().to_string();
}

TEST(LlamaBpeSynthetic, LoadsWithLlama3Defaults) {
  auto r = vocab_from(tiny_bpe_bytes(TinyBpe{}));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const Vocab& v = r.value();
  EXPECT_EQ(v.kind(), VocabKind::Bpe);
  EXPECT_EQ(v.pre_tokenizer().kind(), PreTokenizerKind::Llama3);
  EXPECT_TRUE(v.add_bos());  // llama.cpp sets it for llama-3 without add_bos_token
  EXPECT_TRUE(v.ignore_merges());
  EXPECT_TRUE(v.clean_spaces());
  EXPECT_EQ(v.n_merges(), 10u);
  EXPECT_EQ(v.nl_id(), 3);
  EXPECT_EQ(v.eot_id(), 1);  // "<|end_of_text|>" by text
  // The vocab's own pre-tokenizer splits digits 1-3 at a time and contractions in any case.
  EXPECT_EQ(v.pre_tokenizer().split("12345"), (Words{"123", "45"}));
  EXPECT_EQ(v.pre_tokenizer().split("I'M"), (Words{"I", "'M"}));

  auto id = [&](const std::string& s) { return v.find_token(s); };
  EXPECT_EQ(v.tokenize("12345", false), (std::vector<int32_t>{id("123"), id("45")}));
  EXPECT_EQ(v.tokenize("I'M", false), (std::vector<int32_t>{id("I"), id("'M")}));
  // ignore_merges: "hello" is a token, so it is taken whole although no merge builds it.
  EXPECT_EQ(v.tokenize("hello", false), (std::vector<int32_t>{id("hello")}));
  EXPECT_EQ(v.tokenize(" hello", true), (std::vector<int32_t>{0, id(kG + "hello")}));
  EXPECT_EQ(v.tokenize("hello\n", false), (std::vector<int32_t>{id("hello"), 3}));
  // Symbols without a token fall back to their one-byte tokens; bytes without one are dropped.
  EXPECT_EQ(v.tokenize("hez", false), (std::vector<int32_t>{id("he")}));
  EXPECT_EQ(v.tokenize("<|begin_of_text|>hello", false, true), (std::vector<int32_t>{0, id("hello")}));
}

TEST(LlamaBpeSynthetic, MergesByRankThenLeftmost) {
  TinyBpe t;
  t.pre = "gpt-2";  // no ignore_merges: words are built by merges only
  auto r = vocab_from(tiny_bpe_bytes(t));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const Vocab& v = r.value();
  auto id = [&](const std::string& s) { return v.find_token(s); };
  EXPECT_FALSE(v.add_bos());
  EXPECT_FALSE(v.ignore_merges());
  EXPECT_EQ(v.tokenize("hello", false), (std::vector<int32_t>{id("he"), id("ll"), id("o")}));
  EXPECT_EQ(v.tokenize("12345", false), (std::vector<int32_t>{id("123"), id("45")}));  // one gpt-2 word
  EXPECT_EQ(v.tokenize("abc", false), (std::vector<int32_t>{id("a"), id("bc")}));      // "b c" outranks "a b"
  EXPECT_EQ(v.tokenize("aaa", false), (std::vector<int32_t>{id("aa"), id("a")}));      // equal ranks: leftmost
  EXPECT_EQ(v.tokenize("aaaa", false), (std::vector<int32_t>{id("aa"), id("aa")}));

  TinyBpe swapped = t;
  swapped.merges = {"a b", "b c"};
  auto r2 = vocab_from(tiny_bpe_bytes(swapped));
  ASSERT_TRUE(r2.is_ok()) << r2.status().to_string();
  EXPECT_EQ(r2->tokenize("abc", false), (std::vector<int32_t>{id("ab"), id("c")}));

  // A repeated pair keeps its first rank (llama.cpp emplace): "b c" stays after "a b".
  TinyBpe dup = swapped;
  dup.merges = {"a b", "b c", "a b"};
  auto r3 = vocab_from(tiny_bpe_bytes(dup));
  ASSERT_TRUE(r3.is_ok()) << r3.status().to_string();
  EXPECT_EQ(r3->n_merges(), 2u);
  EXPECT_EQ(r3->tokenize("abc", false), (std::vector<int32_t>{id("ab"), id("c")}));
}

TEST(LlamaBpeSynthetic, AddBosTokenOverridesAndDefaultPre) {
  TinyBpe t;
  t.extra = [](GgufWriter& w) { w.add_bool("tokenizer.ggml.add_bos_token", false); };
  auto r = vocab_from(tiny_bpe_bytes(t));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_FALSE(r->add_bos());

  TinyBpe no_pre;
  no_pre.pre.clear();  // llama.cpp: missing tokenizer.ggml.pre -> its default list
  auto d = vocab_from(tiny_bpe_bytes(no_pre));
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->pre_tokenizer().kind(), PreTokenizerKind::Default);
  EXPECT_FALSE(d->add_bos());

  TinyBpe def;
  def.pre = "default";
  auto d2 = vocab_from(tiny_bpe_bytes(def));
  ASSERT_TRUE(d2.is_ok()) << d2.status().to_string();
  EXPECT_EQ(d2->pre_tokenizer().kind(), PreTokenizerKind::Default);

  // BPE's default BOS id (11) does not exist in a 10-token vocab; llama-3 adds BOS by default.
  GgufWriter w;
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "llama-bpe");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"});
  w.add_string_array("tokenizer.ggml.merges", {"a b"});
  expect_error(vocab_from(w.to_bytes()), StatusCode::Corruption, "tokenizer.ggml.add_bos_token");
}

// llama.cpp sets LSTRIP on "[MASK]" for models named modern-bert: the space before it goes.
TEST(LlamaBpeSynthetic, MaskLstripByModelName) {
  TinyBpe t;
  t.pre = "gpt-2";
  t.tokens.push_back("[MASK]");
  t.types.assign(t.tokens.size(), 1);
  t.types[0] = t.types[1] = 3;
  t.types.back() = 4;  // user-defined
  auto plain = vocab_from(tiny_bpe_bytes(t));
  ASSERT_TRUE(plain.is_ok()) << plain.status().to_string();
  const int32_t a = plain->find_token("a"), g = plain->find_token(kG), mask = plain->find_token("[MASK]");
  EXPECT_EQ(plain->tokenize("a [MASK]", false), (std::vector<int32_t>{a, g, mask}));
  t.extra = [](GgufWriter& w) { w.add_string("general.name", "Modern-BERT base"); };
  auto named = vocab_from(tiny_bpe_bytes(t));
  ASSERT_TRUE(named.is_ok()) << named.status().to_string();
  EXPECT_EQ(named->tokenize("a [MASK]", false), (std::vector<int32_t>{a, mask}));
}

// ---- bad inputs ----

TEST(BpeFromGguf, MalformedMerges) {
  auto with_merges = [](std::vector<std::string> merges) {
    TinyBpe t;
    t.merges = std::move(merges);
    return vocab_from(tiny_bpe_bytes(t));
  };
  expect_error(with_merges({"h e", "he"}), StatusCode::Corruption, "tokenizer.ggml.merges[1]");
  expect_error(with_merges({"h e", "l l", "he "}), StatusCode::Corruption, "tokenizer.ggml.merges[2]");
  expect_error(with_merges({""}), StatusCode::Corruption, "tokenizer.ggml.merges[0]");
  expect_error(with_merges({" h"}), StatusCode::Corruption, "tokenizer.ggml.merges[0]");
  // llama.cpp splits at the first space after the first byte: "  x" is (" ", "x"), accepted.
  EXPECT_TRUE(with_merges({"  x", "a b c"}).is_ok());

  TinyBpe missing;
  missing.with_merges = false;
  expect_error(vocab_from(tiny_bpe_bytes(missing)), StatusCode::NotFound, "tokenizer.ggml.merges");

  TinyBpe wrong_type;
  wrong_type.with_merges = false;
  wrong_type.extra = [](GgufWriter& w) { w.add_i32_array("tokenizer.ggml.merges", {1, 2}); };
  expect_error(vocab_from(tiny_bpe_bytes(wrong_type)), StatusCode::InvalidArgument, "tokenizer.ggml.merges");
}

TEST(BpeFromGguf, UnknownPreTokenizer) {
  TinyBpe t;
  t.pre = "qwen2";
  const auto r = vocab_from(tiny_bpe_bytes(t));
  expect_error(r, StatusCode::Unsupported, "'qwen2'");
  expect_error(r, StatusCode::Unsupported, "tokenizer.ggml.pre");
  expect_error(r, StatusCode::Unsupported, "supported: 'default', 'gpt-2', 'llama-bpe'");
  EXPECT_FALSE(pre_tokenizer_kind_from_name("GPT-2").is_ok());

  TinyBpe wrong_type;
  wrong_type.pre.clear();
  wrong_type.extra = [](GgufWriter& w) { w.add_u32("tokenizer.ggml.pre", 2); };
  expect_error(vocab_from(tiny_bpe_bytes(wrong_type)), StatusCode::InvalidArgument, "tokenizer.ggml.pre");
}

TEST(BpeFromGguf, BadTokensStillRefused) {
  TinyBpe dup;
  dup.tokens[5] = "h";
  expect_error(vocab_from(tiny_bpe_bytes(dup)), StatusCode::Corruption, "tokenizer.ggml.tokens");
  TinyBpe bad_bos;
  bad_bos.bos_id = 999;
  expect_error(vocab_from(tiny_bpe_bytes(bad_bos)), StatusCode::Corruption, "tokenizer.ggml.bos_token_id");
  TinyBpe bad_byte;
  bad_byte.types.assign(bad_byte.tokens.size(), 1);
  bad_byte.types[4] = 6;  // "h" typed as a byte token
  expect_error(vocab_from(tiny_bpe_bytes(bad_byte)), StatusCode::Corruption, "tokenizer.ggml.token_type");
}

// ---- byte-level helpers ----

TEST(BpeByteLevel, EncodeAndDecode) {
  EXPECT_EQ(bpe::byte_to_unicode(' '), "\xC4\xA0");      // U+0120
  EXPECT_EQ(bpe::byte_to_unicode(0), "\xC4\x80");        // U+0100
  EXPECT_EQ(bpe::byte_to_unicode(0xAD), "\xC5\x83");     // U+0143, the last stand-in
  EXPECT_EQ(bpe::byte_to_unicode('a'), "a");
  EXPECT_EQ(bpe::byte_to_unicode(0xE9), "\xC3\xA9");     // printable Latin-1 stands for itself
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  EXPECT_EQ(bpe::decode_text(bpe::encode_bytes(all)), all);
  // llama.cpp llama_decode_text on a character outside the alphabet: the marker, the character's
  // UTF-8 in hex, then the whole token text.
  EXPECT_EQ(bpe::decode_text("ab\xF0\x9F\xA6\x99"), "ab[UNK_BYTE_0xf09fa699ab\xF0\x9F\xA6\x99]");
  EXPECT_EQ(bpe::decode_text("\xFF"), "[UNK_BYTE_0xefbfbd\xFF]");
}

}  // namespace
}  // namespace kvstash
