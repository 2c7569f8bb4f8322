// Vocab + SPM tokenizer: llama.cpp's vocab test vectors, the stories260K golden prompts,
// detokenize round trips, byte fallback, special-token parsing and from_gguf validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf_reader.h"
#include "gguf/gguf_writer.h"
#include "model/vocab.h"
#include "test_paths.h"
#include "vocab_vectors.h"

namespace kvstash {
namespace {


std::unique_ptr<Vocab> load_vocab(const std::string& name) {
  auto f = GgufFile::open(test::model_path(name));
  if (!f.is_ok()) throw std::runtime_error(f.status().to_string());
  auto v = Vocab::from_gguf(**f);
  if (!v.is_ok()) throw std::runtime_error(v.status().to_string());
  return std::make_unique<Vocab>(std::move(v).value());
}


using test::read_all;
using test::read_cases;
using test::VocabCase;

std::string printable(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20) o += "\\x" + std::to_string(c);
    else o += static_cast<char>(c);
  }
  return "'" + o + "'";
}

class LlamaSpmVocab : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    vocab_ = load_vocab("ggml-vocab-llama-spm.gguf").release();
    cases_ = new std::vector<VocabCase>(read_cases(test::model_path("ggml-vocab-llama-spm.gguf"), &n_out_lines_));
  }
  static void TearDownTestSuite() {
    delete vocab_;
    delete cases_;
    vocab_ = nullptr;
    cases_ = nullptr;
  }
  static const Vocab* vocab_;
  static std::vector<VocabCase>* cases_;
  static size_t n_out_lines_;
};
const Vocab* LlamaSpmVocab::vocab_ = nullptr;
std::vector<VocabCase>* LlamaSpmVocab::cases_ = nullptr;
size_t LlamaSpmVocab::n_out_lines_ = 0;

TEST_F(LlamaSpmVocab, Metadata) {
  const Vocab& v = *vocab_;
  EXPECT_EQ(v.kind(), VocabKind::Spm);
  EXPECT_EQ(v.n_tokens(), 32000);
  EXPECT_EQ(v.bos_id(), 1);
  EXPECT_EQ(v.eos_id(), 2);
  EXPECT_EQ(v.unk_id(), 0);
  EXPECT_EQ(v.eot_id(), -1);
  EXPECT_TRUE(v.add_bos());
  EXPECT_FALSE(v.add_eos());
  EXPECT_TRUE(v.add_space_prefix());
  EXPECT_EQ(v.nl_id(), 13);  // <0x0A>
  EXPECT_TRUE(v.is_eog(2));
  EXPECT_FALSE(v.is_eog(1));
  EXPECT_FALSE(v.is_eog(-1));
  EXPECT_FALSE(v.is_eog(1 << 30));
  EXPECT_TRUE(v.is_control(1));
  EXPECT_TRUE(v.is_control(2));
  EXPECT_FALSE(v.is_control(15043));
  EXPECT_FALSE(v.is_control(-1));
  EXPECT_EQ(v.token_type(0), TokenType::Unknown);
  EXPECT_EQ(v.token_type(1), TokenType::Control);
  EXPECT_EQ(v.token_type(3), TokenType::Byte);
  EXPECT_EQ(v.token_type(15043), TokenType::Normal);
  EXPECT_EQ(v.token_type(32000), TokenType::Undefined);
  EXPECT_EQ(v.token_text(15043), "\xe2\x96\x81Hello");
  EXPECT_EQ(v.token_text(-3), "");
  EXPECT_EQ(v.find_token("\xe2\x96\x81Hello"), 15043);
  EXPECT_EQ(v.find_token("no such token at all"), -1);
  EXPECT_EQ(v.byte_to_token(0x0A), 13);
  EXPECT_EQ(v.byte_to_token(0xFF), 3 + 0xFF);
  EXPECT_EQ(v.token_score(-1), 0.0f);
}

TEST_F(LlamaSpmVocab, MatchesLlamaCppVectors) {
  ASSERT_EQ(cases_->size(), n_out_lines_) << "each .inp text needs one .out line";
  ASSERT_EQ(cases_->size(), 46u);
  EXPECT_EQ(vocab_->tokenize("Hello world", false), (std::vector<int32_t>{15043, 3186}));
  EXPECT_EQ((*cases_)[2].text, "");  // the vectors include the empty text...
  EXPECT_EQ((*cases_)[3].text, " ");  // ...and a lone space
  for (const VocabCase& c : *cases_) {
    EXPECT_EQ(vocab_->tokenize(c.text, /*add_special=*/false, /*parse_special=*/false), c.ids) << "text " << printable(c.text);
  }
}

TEST_F(LlamaSpmVocab, AddSpecialPrependsBos) {
  EXPECT_EQ(vocab_->tokenize("Hello world", true), (std::vector<int32_t>{1, 15043, 3186}));
  EXPECT_EQ(vocab_->tokenize("", true), (std::vector<int32_t>{1}));
  EXPECT_EQ(vocab_->tokenize("", false), (std::vector<int32_t>{}));
}

// llama.cpp: detokenize(tokenize(text)) == text for valid UTF-8, since SPM byte fallback keeps
// every byte and detokenize drops exactly the one space the space prefix added. All 46
// vectors round-trip (none is changed by llama.cpp's SPM path: no normalisation, no
// clean_spaces for SPM).
TEST_F(LlamaSpmVocab, DetokenizeRoundTrip) {
  for (const VocabCase& c : *cases_) {
    EXPECT_EQ(vocab_->detokenize(c.ids), c.text) << "text " << printable(c.text);
    EXPECT_EQ(vocab_->detokenize(vocab_->tokenize(c.text, false)), c.text) << "text " << printable(c.text);
  }
}

TEST_F(LlamaSpmVocab, TokenToPiece) {
  const Vocab& v = *vocab_;
  EXPECT_EQ(v.token_to_piece(15043), " Hello");
  EXPECT_EQ(v.token_to_piece(13), "\n");       // <0x0A>
  EXPECT_EQ(v.token_to_piece(3 + 0xF0), "\xF0");  // a raw byte
  EXPECT_EQ(v.token_to_piece(1), "");
  EXPECT_EQ(v.token_to_piece(1, true), "<s>");
  EXPECT_EQ(v.token_to_piece(0), "");
  EXPECT_EQ(v.token_to_piece(0, true), "<unk>");
  EXPECT_EQ(v.token_to_piece(-1), "");
  EXPECT_EQ(v.token_to_piece(32000, true), "");
  // The first token's piece loses one leading space; a BOS in front consumes that rule
  // (llama.cpp common_detokenize, remove_special = false).
  EXPECT_EQ(v.detokenize({15043, 3186}), "Hello world");
  EXPECT_EQ(v.detokenize({259, 15043}), "  Hello");  // "▁▁" + "▁Hello" -> one space dropped
  EXPECT_EQ(v.detokenize({1, 15043, 3186}), " Hello world");
  EXPECT_EQ(v.detokenize({1, 15043, 3186}, true), "<s> Hello world");
  EXPECT_EQ(v.detokenize({1, 15043, 3186, 2}, false, /*remove_special=*/true), " Hello world");
  // Out-of-range ids contribute nothing and do not crash.
  EXPECT_EQ(v.detokenize({-7, 15043, 1 << 30, 3186}), " Hello world");
  EXPECT_EQ(v.detokenize({}), "");
}

TEST_F(LlamaSpmVocab, ByteFallback) {
  const Vocab& v = *vocab_;
  // U+1F999 (llama) is not in the vocab: "▁" then its four UTF-8 bytes as <0xNN> tokens.
  const std::vector<int32_t> ids = v.tokenize("\xF0\x9F\xA6\x99", false);
  ASSERT_EQ(ids, (std::vector<int32_t>{29871, 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x99}));
  for (size_t i = 1; i < ids.size(); ++i) {
    EXPECT_TRUE(v.is_byte(ids[i]));
    EXPECT_EQ(v.token_type(ids[i]), TokenType::Byte);
  }
  EXPECT_EQ(v.token_text(ids[1]), "<0xF0>");
  EXPECT_EQ(v.detokenize(ids), "\xF0\x9F\xA6\x99");
  // A rare CJK character (U+4E42) too.
  const std::vector<int32_t> cjk = v.tokenize("\xE4\xB9\x82", false);
  EXPECT_EQ(cjk, (std::vector<int32_t>{29871, 3 + 0xE4, 3 + 0xB9, 3 + 0x82}));
}

TEST_F(LlamaSpmVocab, InvalidUtf8DoesNotCrash) {
  const Vocab& v = *vocab_;
  // 0xFF as a lead byte claims 4 bytes (llama.cpp unicode_len_utf8), swallowing the escaped
  // space's first two bytes; the pieces are then emitted as bytes, so the round trip returns
  // "▁" (U+2581) where that space was. Continuation bytes alone are 1-byte symbols.
  const std::string bad = "\xFF\xFE abc \x80\xBF x\xE2\x96";
  const std::vector<int32_t> ids = v.tokenize(bad, false);
  ASSERT_FALSE(ids.empty());
  for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < v.n_tokens());
  EXPECT_EQ(ids[0], 29871);  // the space prefix
  EXPECT_EQ(std::vector<int32_t>(ids.begin() + 1, ids.begin() + 5), (std::vector<int32_t>{3 + 0xFF, 3 + 0xFE, 3 + 0xE2, 3 + 0x96}));
  EXPECT_EQ(v.detokenize(ids), "\xFF\xFE\xE2\x96\x81" "abc \x80\xBF x\xE2\x96");
  // Every single byte, and a pseudo-random byte soup.
  for (int b = 0; b < 256; ++b) {
    for (int32_t id : v.tokenize(std::string(1, static_cast<char>(b)), true, true)) EXPECT_TRUE(id >= 0 && id < v.n_tokens());
  }
  std::string soup;
  uint32_t x = 12345;
  for (int i = 0; i < 5000; ++i) {
    x = x * 1103515245u + 12345u;
    soup += static_cast<char>(x >> 24);
  }
  for (int32_t id : v.tokenize(soup, true, true)) EXPECT_TRUE(id >= 0 && id < v.n_tokens());
}

TEST_F(LlamaSpmVocab, ParseSpecial) {
  const Vocab& v = *vocab_;
  // Control texts are plain text without parse_special...
  const std::vector<int32_t> plain = v.tokenize("<s>Hello", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_EQ(v.detokenize(plain), "<s>Hello");
  // ...and special tokens with it. After a special token the next raw fragment gets the
  // space prefix again (llama.cpp is_prev_special).
  EXPECT_EQ(v.tokenize("<s>Hello", false, true), (std::vector<int32_t>{1, 15043}));
  std::vector<int32_t> expect = v.tokenize("a", false);
  expect.push_back(2);
  const std::vector<int32_t> b = v.tokenize("b", false);
  expect.insert(expect.end(), b.begin(), b.end());
  EXPECT_EQ(v.tokenize("a</s>b", false, true), expect);
  EXPECT_EQ(v.tokenize("</s></s>", false, true), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(v.tokenize("<unk>", false, true), (std::vector<int32_t>{0}));
  EXPECT_EQ(v.tokenize("<s>", true, true), (std::vector<int32_t>{1, 1}));
}

TEST_F(LlamaSpmVocab, LongPromptIsFast) {
  std::string text;
  for (const VocabCase& c : *cases_) text += c.text + "\n";
  while (text.size() < 16000) text += text;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = vocab_->tokenize(text, true);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_GE(ids.size(), 4000u);
  std::printf("tokenized %zu bytes into %zu tokens in %.2f ms\n", text.size(), ids.size(), ms);
  EXPECT_LT(ms, 500.0);  // generous for sanitizer builds on a shared machine; ~10x faster in Release
  // BOS removed by remove_special: llama.cpp then keeps the prefix space.
  EXPECT_TRUE(vocab_->detokenize(ids, false, true) == " " + text);
  EXPECT_TRUE(vocab_->detokenize(std::vector<int32_t>(ids.begin() + 1, ids.end())) == text);
}

// stories260K: the prompt ids recorded from ik_llama.cpp and llama-server.
TEST(Stories260KVocab, MatchesReferencePrompts) {
  const auto vocab = load_vocab("stories260K.gguf");
  EXPECT_EQ(vocab->n_tokens(), 512);
  EXPECT_EQ(vocab->sep_id(), -1);  // stored as 0xFFFFFFFF
  EXPECT_EQ(vocab->pad_id(), -1);
  EXPECT_EQ(vocab->tokenize("Once upon a time", true), (std::vector<int32_t>{1, 403, 407, 261, 378}));

  const nlohmann::json ref = nlohmann::json::parse(read_all(test::reference_dir() + "/stories260K-greedy.json"));
  ASSERT_TRUE(ref.contains("prompts"));
  ASSERT_FALSE(ref["prompts"].empty());
  bool saw_france = false;
  for (const auto& p : ref["prompts"]) {
    const std::string prompt = p.at("prompt").get<std::string>();
    const std::vector<int32_t> expect = p.at("prompt_token_ids").get<std::vector<int32_t>>();
    ASSERT_EQ(expect.size(), p.at("n_prompt_tokens").get<size_t>());
    EXPECT_EQ(vocab->tokenize(prompt, true), expect) << "prompt " << printable(prompt);
    if (prompt == "What is the capital of France?") {
      saw_france = true;
      EXPECT_EQ(expect.size(), 21u);
    }
    EXPECT_EQ(vocab->detokenize(expect, false, true), " " + prompt);  // BOS removed: its space stays
  }
  EXPECT_TRUE(saw_france);
}

// ---- from_gguf on handcrafted vocabularies ----

const std::string kSp = "\xe2\x96\x81";  // ▁

struct TinyVocab {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", kSp, "a", "b", kSp + "a", "ab", kSp + "ab", "<0x63>"};
  std::vector<float> scores = {0, 0, 0, -5, -6, -7, -1, -0.5f, -2, 0};
  std::vector<int32_t> types = {2, 3, 3, 1, 1, 1, 1, 1, 1, 6};
};

std::vector<uint8_t> tiny_bytes(const TinyVocab& t, const std::function<void(GgufWriter&)>& extra = {}, bool with_model = true) {
  GgufWriter w;
  if (with_model) w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", t.tokens);
  w.add_f32_array("tokenizer.ggml.scores", t.scores);
  w.add_i32_array("tokenizer.ggml.token_type", t.types);
  if (extra) extra(w);
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

TEST(VocabFromGguf, TinyVocabMergesByScore) {
  auto r = vocab_from(tiny_bytes(TinyVocab{}));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const Vocab& v = r.value();
  // "▁ab": pairs "▁a" (-1) and "ab" (-0.5): "ab" wins, then "▁"+"ab" -> "▁ab".
  EXPECT_EQ(v.tokenize("ab", false), (std::vector<int32_t>{8}));
  // "c" has a byte token <0x63>; "d" has none -> unk.
  EXPECT_EQ(v.tokenize("c", false), (std::vector<int32_t>{3, 9}));
  EXPECT_EQ(v.tokenize("d", false), (std::vector<int32_t>{3, 0}));
  EXPECT_EQ(v.detokenize({3, 9}), "c");
}

TEST(VocabFromGguf, TiesMergeLeftmostFirst) {
  TinyVocab t;
  t.tokens = {"<unk>", "<s>", "</s>", "a", "aa"};
  t.scores = {0, 0, 0, -1, -1};
  t.types = {2, 3, 3, 1, 1};
  auto r = vocab_from(tiny_bytes(t, [](GgufWriter& w) { w.add_bool("tokenizer.ggml.add_space_prefix", false); }));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->tokenize("aaa", false), (std::vector<int32_t>{4, 3}));
  EXPECT_EQ(r->tokenize("aaaa", false), (std::vector<int32_t>{4, 4}));
  EXPECT_FALSE(r->add_space_prefix());
}

TEST(VocabFromGguf, NoByteTokensFallsBackToUnk) {
  TinyVocab t;
  t.tokens = {"<unk>", "<s>", "</s>", kSp, "x"};
  t.scores = {0, 0, 0, 0, 0};
  t.types = {2, 3, 3, 1, 1};
  auto r = vocab_from(tiny_bytes(t, [](GgufWriter& w) { w.add_u32("tokenizer.ggml.unknown_token_id", 0xFFFFFFFFu); }));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->unk_id(), 0);  // 0xFFFFFFFF = "not set": llama.cpp's SPM default (0) stays
  EXPECT_EQ(r->byte_to_token('y'), -1);
  EXPECT_EQ(r->tokenize("xy", false), (std::vector<int32_t>{3, 4, 0}));
}

TEST(VocabFromGguf, ScoresLengthMismatch) {
  TinyVocab t;
  t.scores.pop_back();
  expect_error(vocab_from(tiny_bytes(t)), StatusCode::Corruption, "tokenizer.ggml.scores");
}

TEST(VocabFromGguf, TokenTypeLengthMismatch) {
  TinyVocab t;
  t.types.push_back(1);
  expect_error(vocab_from(tiny_bytes(t)), StatusCode::Corruption, "tokenizer.ggml.token_type");
}

TEST(VocabFromGguf, BosIdOutOfRange) {
  expect_error(vocab_from(tiny_bytes(TinyVocab{}, [](GgufWriter& w) { w.add_u32("tokenizer.ggml.bos_token_id", 10); })),
               StatusCode::Corruption, "tokenizer.ggml.bos_token_id");
  expect_error(vocab_from(tiny_bytes(TinyVocab{}, [](GgufWriter& w) { w.add_string("tokenizer.ggml.eos_token_id", "2"); })),
               StatusCode::InvalidArgument, "tokenizer.ggml.eos_token_id");
}

TEST(VocabFromGguf, MissingTokens) {
  GgufWriter w;
  w.add_string("tokenizer.ggml.model", "llama");
  const std::vector<uint8_t> bytes = w.to_bytes();
  expect_error(vocab_from(bytes), StatusCode::NotFound, "tokenizer.ggml.tokens");
}

TEST(VocabFromGguf, MissingModel) {
  expect_error(vocab_from(tiny_bytes(TinyVocab{}, {}, /*with_model=*/false)), StatusCode::NotFound, "tokenizer.ggml.model");
}

TEST(VocabFromGguf, UnknownAndUnsupportedModels) {
  GgufWriter w;
  w.add_string("tokenizer.ggml.model", "word-piece-9000");
  expect_error(vocab_from(w.to_bytes()), StatusCode::Unsupported, "'word-piece-9000'");
  GgufWriter w2;
  w2.add_string("tokenizer.ggml.model", "t5");
  expect_error(vocab_from(w2.to_bytes()), StatusCode::Unsupported, "tokenizer.ggml.model");

  // "gpt2" (BPE) is supported now; its tests are in tokenizer_bpe_test.cpp.
  GgufWriter w3;
  w3.add_string("tokenizer.ggml.model", "rwkv");
  expect_error(vocab_from(w3.to_bytes()), StatusCode::Unsupported, "(supported: 'llama', 'gpt2')");
}

TEST(VocabFromGguf, OtherBadInputs) {
  TinyVocab dup;
  dup.tokens[5] = "a";
  expect_error(vocab_from(tiny_bytes(dup)), StatusCode::Corruption, "tokenizer.ggml.tokens");

  TinyVocab bad_byte;
  bad_byte.tokens[9] = "<0xZZ>";
  expect_error(vocab_from(tiny_bytes(bad_byte)), StatusCode::Corruption, "tokenizer.ggml.token_type");

  TinyVocab nan_score;
  nan_score.scores[4] = std::numeric_limits<float>::quiet_NaN();
  expect_error(vocab_from(tiny_bytes(nan_score)), StatusCode::Corruption, "tokenizer.ggml.scores");

  GgufWriter w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w.add_string_array("tokenizer.ggml.scores", {"0", "1"});
  expect_error(vocab_from(w.to_bytes()), StatusCode::InvalidArgument, "tokenizer.ggml.scores");

  // A one-token vocab has no default BOS (id 1), yet SPM adds BOS by default.
  GgufWriter w2;
  w2.add_string("tokenizer.ggml.model", "llama");
  w2.add_string_array("tokenizer.ggml.tokens", {"a"});
  expect_error(vocab_from(w2.to_bytes()), StatusCode::Corruption, "tokenizer.ggml.add_bos_token");
  w2.add_bool("tokenizer.ggml.add_bos_token", false);
  auto ok = vocab_from(w2.to_bytes());
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->bos_id(), -1);
  EXPECT_EQ(ok->token_score(0), 0.0f);  // no scores key: 0
  EXPECT_EQ(ok->token_type(0), TokenType::Normal);  // no token_type key: normal

  TinyVocab empty_text;
  empty_text.tokens[7] = "";  // llama.cpp renames it "[EMPTY_7]"
  auto e = vocab_from(tiny_bytes(empty_text));
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  EXPECT_EQ(e->token_text(7), "[EMPTY_7]");
}

TEST(VocabFromGguf, EotDetectedByText) {
  TinyVocab t;
  t.tokens.push_back("<|im_end|>");
  t.scores.push_back(0);
  t.types.push_back(1);  // normal: llama.cpp marks it control
  auto r = vocab_from(tiny_bytes(t));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->eot_id(), 10);
  EXPECT_TRUE(r->is_eog(10));
  EXPECT_TRUE(r->is_eog(2));
  EXPECT_TRUE(r->is_control(10));
  EXPECT_EQ(r->token_to_piece(10), "");
  EXPECT_EQ(r->token_to_piece(10, true), "<|im_end|>");
  EXPECT_EQ(r->eog_ids(), (std::vector<int32_t>{2, 10}));
}

}  // namespace
}  // namespace kvstash
