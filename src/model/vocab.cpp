// Vocab loading (tokenizer.ggml.* metadata) and the tokenizer-independent parts of (de)tokenizing,
// ported from llama.cpp's llama_vocab::impl (src/llama-vocab.cpp): load(),
// tokenizer_st_partition(), tokenize(), token_to_piece() and detokenize(). The segmentation of
// raw text lives in tokenizer_spm.cpp and tokenizer_bpe.cpp (+ pretokenizer.cpp).
#include "model/vocab.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

#include "gguf/gguf_reader.h"
#include "model/tokenizer_bpe.h"
#include "model/tokenizer_spm.h"

namespace kvstash {
namespace {

constexpr const char* kKeyModel = "tokenizer.ggml.model";
constexpr const char* kKeyPre = "tokenizer.ggml.pre";
constexpr const char* kKeyMerges = "tokenizer.ggml.merges";
constexpr const char* kKeyTokens = "tokenizer.ggml.tokens";
constexpr const char* kKeyScores = "tokenizer.ggml.scores";
constexpr const char* kKeyTokenType = "tokenizer.ggml.token_type";
constexpr const char* kKeyAddSpacePrefix = "tokenizer.ggml.add_space_prefix";
constexpr const char* kKeyAddBos = "tokenizer.ggml.add_bos_token";
constexpr const char* kKeyAddEos = "tokenizer.ggml.add_eos_token";
constexpr const char* kKeyBosId = "tokenizer.ggml.bos_token_id";
constexpr const char* kKeyEosId = "tokenizer.ggml.eos_token_id";

constexpr std::string_view kSpaceEscape = "\xe2\x96\x81";  // U+2581 '▁'

bool is_one_of(const std::string& s, std::initializer_list<std::string_view> list) {
  return std::find(list.begin(), list.end(), std::string_view(s)) != list.end();
}

// Optional bool key: absent leaves *out unchanged; a non-bool is an error naming the key.
Status read_optional_bool(const GgufFile& f, const char* key, bool* out) {
  if (!f.find(key)) return Status::ok();
  KV_ASSIGN_OR_RETURN(*out, f.get_bool(key));
  return Status::ok();
}

// Optional special-token id. Absent, negative, 0xFFFFFFFF and UINT64_MAX mean "not set" and
// keep *id (llama.cpp keeps its default for them). Other ids must be < n_tokens: llama.cpp
// only warns and keeps the default, we refuse the file.
Status read_special_id(const GgufFile& f, const char* key, int32_t n_tokens, int32_t* id) {
  const GgufValue* v = f.find(key);
  if (!v) return Status::ok();
  if (!v->is_integer())
    return invalid_argument(std::string("vocab: ") + key + " has type " + gguf_type_name(v->type) + ", expected an integer token id");
  const bool is_signed = v->type == GgufType::I8 || v->type == GgufType::I16 || v->type == GgufType::I32 || v->type == GgufType::I64;
  uint64_t value = 0;
  if (is_signed) {
    if (v->i < 0) return Status::ok();
    value = static_cast<uint64_t>(v->i);
  } else {
    if (v->u == 0xFFFFFFFFu || v->u == std::numeric_limits<uint64_t>::max()) return Status::ok();
    value = v->u;
  }
  if (value >= static_cast<uint64_t>(n_tokens))
    return corruption(std::string("vocab: ") + key + " is " + std::to_string(value) + ", expected an id below " +
                      std::to_string(n_tokens) + " (the size of " + kKeyTokens + ")");
  *id = static_cast<int32_t>(value);
  return Status::ok();
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0xNN>" -> NN, else -1.
int parse_byte_token(const std::string& text) {
  if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') return -1;
  const int hi = hex_value(text[3]);
  const int lo = hex_value(text[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

std::string unescape_whitespace(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, kSpaceEscape.size(), kSpaceEscape) == 0) {
      out += ' ';
      i += kSpaceEscape.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

// llama.cpp llama_vocab::impl::detokenize, the clean_spaces passes, ported literally (the
// second pass blanks the space after " ' " in place, which the third pass then sees).
void clean_up_spaces(std::string& s) {
  char* text = s.data();
  const int64_t n = static_cast<int64_t>(s.size());
  // First pass: " ?", " !", " .", " ," lose the space.
  int64_t total = n ? 1 : 0;
  for (int64_t i = 1; i < n; ++i) {
    const char x = text[i];
    if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
    text[total++] = x;
  }
  // Second pass: " ' " -> "'".
  const int64_t total2 = total;
  total = total ? 1 : 0;
  for (int64_t i = 1; i < total2; ++i) {
    const char x = text[i];
    if (x == '\'' && i + 1 < total2 && text[i - 1] == ' ' && text[i + 1] == ' ') {
      --total;
      text[++i] = '\0';
    }
    text[total++] = x;
  }
  // Third pass: " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it).
  const int64_t total3 = total;
  total = total ? 1 : 0;
  for (int64_t i = 1; i < total3; ++i) {
    const char x = text[i];
    if (text[i - 1] == ' ' && x == '\'' && i + 1 < total3) {
      const char x1 = text[i + 1];
      if (x1 == 's' || x1 == 'm') {
        --total;
      } else if (x1 != 't' && x1 != 'd' && i + 2 < total3) {
        const char x2 = text[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
      }
    }
    text[total++] = x;
  }
  s.resize(static_cast<size_t>(total));
}

}  // namespace

Result<Vocab> Vocab::from_gguf(const GgufFile& f) {
  Vocab v;
  KV_RETURN_IF_ERROR(v.load(f));
  return v;
}

Status Vocab::load(const GgufFile& f) {
  KV_ASSIGN_OR_RETURN(const std::string model, f.get_string(kKeyModel));
  if (model == "llama") {
    // llama.cpp defaults for SPM.
    kind_ = VocabKind::Spm;
    add_space_prefix_ = true;
    add_bos_ = true;
    add_eos_ = false;
    clean_spaces_ = false;
  } else if (model == "gpt2") {
    KV_RETURN_IF_ERROR(load_bpe_model(f));
  } else {
    static constexpr std::string_view kKnown[] = {"no_vocab", "none", "bert", "t5", "rwkv", "plamo2", "hybriddna", "whitespace", "gemma4"};
    const bool known = std::find(std::begin(kKnown), std::end(kKnown), model) != std::end(kKnown);
    return unsupported(std::string("vocab: ") + (known ? "" : "unknown ") + "tokenizer model '" + model + "' in " + kKeyModel +
                       " is not supported (supported: 'llama', 'gpt2')");
  }
  KV_RETURN_IF_ERROR(read_optional_bool(f, kKeyAddSpacePrefix, &add_space_prefix_));

  KV_RETURN_IF_ERROR(load_tokens(f));
  if (kind_ == VocabKind::Bpe) KV_RETURN_IF_ERROR(load_merges(f));
  KV_RETURN_IF_ERROR(load_special_ids(f));
  detect_special_by_text();
  build_caches(f);
  return Status::ok();
}

// llama.cpp defaults for BPE and the flags its pre-tokenizer types set.
Status Vocab::load_bpe_model(const GgufFile& f) {
  kind_ = VocabKind::Bpe;
  add_space_prefix_ = false;
  add_bos_ = false;
  add_eos_ = false;
  clean_spaces_ = true;
  ignore_merges_ = false;
  std::string pre;  // absent: llama.cpp warns and uses its default pre-tokenizer
  if (f.find(kKeyPre)) {
    KV_ASSIGN_OR_RETURN(pre, f.get_string(kKeyPre));
  }
  KV_ASSIGN_OR_RETURN(const PreTokenizerKind pre_kind, pre_tokenizer_kind_from_name(pre));
  switch (pre_kind) {
    case PreTokenizerKind::Llama3:
      ignore_merges_ = true;
      add_bos_ = true;
      break;
    case PreTokenizerKind::DeepseekLlm:
      clean_spaces_ = false;
      break;
    case PreTokenizerKind::Default:
    case PreTokenizerKind::Gpt2:
      break;
  }
  KV_ASSIGN_OR_RETURN(pre_, PreTokenizer::create(pre_kind));
  return Status::ok();
}

// Each entry is "left right", split at the first space after the first byte (llama.cpp
// word.find(' ', 1), so a left part may be a lone space and the right part may hold spaces).
// llama.cpp silently files an entry without that split under the pair ("", ""); we refuse it.
Status Vocab::load_merges(const GgufFile& f) {
  KV_ASSIGN_OR_RETURN(const GgufValue* merges, f.get_array(kKeyMerges, GgufType::STRING));
  const size_t n = merges->strs.size();
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return corruption(std::string("vocab: ") + kKeyMerges + " has " + std::to_string(n) + " entries, expected at most 2^31-1");
  merges_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& entry = merges->strs[i];
    const size_t pos = entry.find(' ', 1);
    if (pos == std::string::npos || pos + 1 == entry.size())
      return corruption(std::string("vocab: ") + kKeyMerges + "[" + std::to_string(i) + "] is '" + entry +
                        "', expected two non-empty parts separated by a space");
    merges_.add(std::string_view(entry).substr(0, pos), std::string_view(entry).substr(pos + 1), static_cast<int32_t>(i));
  }
  return Status::ok();
}

Status Vocab::load_tokens(const GgufFile& f) {
  KV_ASSIGN_OR_RETURN(const GgufValue* toks, f.get_array(kKeyTokens, GgufType::STRING));
  const size_t n = toks->strs.size();
  if (n == 0) return corruption(std::string("vocab: ") + kKeyTokens + " has 0 entries, expected at least 1");
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return corruption(std::string("vocab: ") + kKeyTokens + " has " + std::to_string(n) + " entries, expected at most 2^31-1");

  const GgufValue* scores = f.find(kKeyScores);
  if (scores) {
    if (scores->type != GgufType::ARRAY || (scores->elem_type != GgufType::F32 && scores->elem_type != GgufType::I32))
      return invalid_argument(std::string("vocab: ") + kKeyScores + " has type " + gguf_type_name(scores->type) +
                              (scores->type == GgufType::ARRAY ? std::string(" of ") + gguf_type_name(scores->elem_type) : "") +
                              ", expected array of f32 or i32");
    if (scores->n_elems != n)
      return corruption(std::string("vocab: ") + kKeyScores + " has " + std::to_string(scores->n_elems) + " entries, expected " +
                        std::to_string(n) + " (one per entry of " + kKeyTokens + ")");
  }
  const GgufValue* types = f.find(kKeyTokenType);
  if (types) {
    KV_ASSIGN_OR_RETURN(types, f.get_array(kKeyTokenType, GgufType::I32));
    if (types->n_elems != n)
      return corruption(std::string("vocab: ") + kKeyTokenType + " has " + std::to_string(types->n_elems) + " entries, expected " +
                        std::to_string(n) + " (one per entry of " + kKeyTokens + ")");
  }

  tokens_.resize(n);
  text_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TokenData& t = tokens_[i];
    t.text = toks->strs[i];
    if (t.text.empty()) t.text = "[EMPTY_" + std::to_string(i) + "]";  // as llama.cpp
    const auto [it, inserted] = text_to_id_.emplace(t.text, static_cast<int32_t>(i));
    if (!inserted)
      return corruption(std::string("vocab: ") + kKeyTokens + " has duplicate text '" + t.text + "' at ids " +
                        std::to_string(it->second) + " and " + std::to_string(i) + ", expected unique texts");
    if (scores) {
      t.score = scores->elem_type == GgufType::F32 ? static_cast<float>(scores->array_f64(i)) : static_cast<float>(scores->array_i64(i));
      if (std::isnan(t.score))
        return corruption(std::string("vocab: ") + kKeyScores + "[" + std::to_string(i) + "] is NaN, expected a number");
    }
    t.type = TokenType::Normal;
    t.attr = kAttrNormal;
    if (types) {
      const int64_t raw = types->array_i64(i);
      // Unknown type values become Undefined, as in llama.cpp.
      t.type = (raw >= 0 && raw <= 6) ? static_cast<TokenType>(raw) : TokenType::Undefined;
      switch (t.type) {
        case TokenType::Undefined: t.attr = 0; break;
        case TokenType::Normal: t.attr = kAttrNormal; break;
        case TokenType::Unknown: t.attr = kAttrUnknown; break;
        case TokenType::Control: t.attr = kAttrControl; break;
        case TokenType::UserDefined: t.attr = kAttrUserDefined; break;
        case TokenType::Unused: t.attr = kAttrUnused; break;
        case TokenType::Byte: t.attr = kAttrByte; break;
      }
    }
    if (t.type == TokenType::Byte) {
      const int b = parse_byte_token(t.text);
      if (b < 0)
        return corruption(std::string("vocab: token ") + std::to_string(i) + " '" + t.text + "' has type byte in " + kKeyTokenType +
                          ", expected text of the form <0xNN>");
      t.byte = static_cast<int16_t>(b);
    }
  }

  // llama.cpp byte_to_token. SPM: "<0xNN>" (upper-case hex), else the one-byte token. BPE: the
  // byte-level character.
  for (int b = 0; b < 256; ++b) {
    if (kind_ == VocabKind::Bpe) {
      byte_to_token_[b] = find_token(bpe::byte_to_unicode(static_cast<uint8_t>(b)));
      continue;
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    int32_t id = find_token(buf);
    if (id < 0) id = find_token(std::string(1, static_cast<char>(b)));
    byte_to_token_[b] = id;
  }
  return Status::ok();
}

Status Vocab::load_special_ids(const GgufFile& f) {
  const int32_t n = n_tokens();
  // Computed before the special ids are read, so it sees the default pad (none), as llama.cpp.
  if (kind_ == VocabKind::Spm) {
    bos_id_ = 1;  // llama.cpp SPM defaults
    eos_id_ = 2;
    unk_id_ = 0;
    nl_id_ = byte_to_token_[static_cast<uint8_t>('\n')] >= 0 ? byte_to_token_[static_cast<uint8_t>('\n')] : pad_id_;
  } else {
    bos_id_ = 11;  // llama.cpp BPE defaults
    eos_id_ = 11;
    unk_id_ = -1;
    // llama.cpp: tokenize("\n", false) while no special token is cached yet: the raw BPE path.
    std::vector<int32_t> ids;
    bpe::tokenize_text(*this, pre_, merges_, ignore_merges_, "\n", ids);
    nl_id_ = ids.empty() ? pad_id_ : ids[0];
  }

  const std::pair<const char*, int32_t*> keys[] = {
      {kKeyBosId, &bos_id_},
      {kKeyEosId, &eos_id_},
      {"tokenizer.ggml.eot_token_id", &eot_id_},
      {"tokenizer.ggml.eom_token_id", &eom_id_},
      {"tokenizer.ggml.unknown_token_id", &unk_id_},
      {"tokenizer.ggml.seperator_token_id", &sep_id_},  // sic, the GGUF key is misspelled
      {"tokenizer.ggml.padding_token_id", &pad_id_},
      {"tokenizer.ggml.mask_token_id", &mask_id_},
      {"tokenizer.ggml.fim_pre_token_id", &fim_pre_id_},
      {"tokenizer.ggml.fim_suf_token_id", &fim_suf_id_},
      {"tokenizer.ggml.fim_mid_token_id", &fim_mid_id_},
      {"tokenizer.ggml.fim_pad_token_id", &fim_pad_id_},
      {"tokenizer.ggml.fim_rep_token_id", &fim_rep_id_},
      {"tokenizer.ggml.fim_sep_token_id", &fim_sep_id_},
      {"tokenizer.ggml.prefix_token_id", &fim_pre_id_},  // deprecated spellings
      {"tokenizer.ggml.suffix_token_id", &fim_suf_id_},
      {"tokenizer.ggml.middle_token_id", &fim_mid_id_},
  };
  for (const auto& [key, id] : keys) {
    if (*id >= n) *id = -1;  // a default outside a small vocab is disabled
    KV_RETURN_IF_ERROR(read_special_id(f, key, n, id));
  }

  KV_RETURN_IF_ERROR(read_optional_bool(f, kKeyAddBos, &add_bos_));
  KV_RETURN_IF_ERROR(read_optional_bool(f, kKeyAddEos, &add_eos_));
  if (add_bos_ && bos_id_ < 0)
    return corruption(std::string("vocab: ") + kKeyAddBos + " is true, but " + kKeyBosId + " is not set");
  if (add_eos_ && eos_id_ < 0)
    return corruption(std::string("vocab: ") + kKeyAddEos + " is true, but " + kKeyEosId + " is not set");
  return Status::ok();
}

// llama.cpp's text-based special token detection (its converters do not write all ids).
// llama.cpp walks an unordered_map; we walk ids in ascending order, so when several
// candidates exist, the lowest id wins.
void Vocab::detect_special_by_text() {
  const int32_t n = n_tokens();
  auto make_control = [&](int32_t id) { tokens_[id].attr |= kAttrControl; };
  auto detect = [&](int32_t id, int32_t* slot, std::initializer_list<std::string_view> texts) {
    if (*slot < 0 && is_one_of(tokens_[id].text, texts)) {
      *slot = id;
      make_control(id);
    }
  };
  for (int32_t id = 0; id < n; ++id) {
    detect(id, &eot_id_,
           {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
            "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "<end_of_utterance>"});
    detect(id, &eom_id_, {"<|eom_id|>"});
    detect(id, &fim_pre_id_,
           {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>",
            "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"});
    detect(id, &fim_suf_id_,
           {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>", "<SUF>",
            "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"});
    detect(id, &fim_mid_id_,
           {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>",
            "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"});
    detect(id, &fim_pad_id_, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"});
    detect(id, &fim_rep_id_, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"});
    detect(id, &fim_sep_id_, {"<|file_sep|>"});
  }
  // Control tokens named "...unused..." are unused.
  for (TokenData& t : tokens_)
    if ((t.attr & kAttrControl) && t.text.find("unused") != std::string::npos) t.attr |= kAttrUnused;

  std::set<int32_t> eog;
  for (int32_t id : {fim_pad_id_, fim_rep_id_, fim_sep_id_})
    if (id >= 0) eog.insert(id);
  for (int32_t id = 0; id < n; ++id) {
    if (is_one_of(tokens_[id].text,
                  {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
                   "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>",
                   "<eos>", "<turn|>", "<|tool_response>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~["})) {
      eog.insert(id);
      make_control(id);
    }
  }
  for (int32_t id = 0; id < n; ++id)  // gpt-oss: always rendered
    if (is_one_of(tokens_[id].text, {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})) tokens_[id].attr = kAttrUserDefined;
  for (int32_t id : {eos_id_, eot_id_, eom_id_})
    if (id >= 0) eog.insert(id);

  // o200k_harmony / solar-open: "<|end|>" is not EOG when "<|return|>"+"<|call|>" or "<|calls|>"+"<|flush|>" are.
  bool has_return = false, has_call = false, has_flush = false, has_tool_response = false;
  int32_t end_id = -1, s_id = -1;
  for (int32_t id : eog) {
    const std::string& text = tokens_[id].text;
    if (text == "<|return|>") has_return = true;
    else if (text == "<|call|>" || text == "<|calls|>") has_call = true;
    else if (text == "<|flush|>") has_flush = true;
    else if (text == "<|end|>") end_id = id;
  }
  if (end_id >= 0 && has_call && (has_return || has_flush)) {
    eog.erase(end_id);
    tokens_[end_id].attr = kAttrUserDefined;
  }
  // gemma4 / paddleocr: "</s>" is not EOG next to "<|tool_response>".
  for (int32_t id : eog) {
    if (tokens_[id].text == "<|tool_response>") has_tool_response = true;
    else if (tokens_[id].text == "</s>") s_id = id;
  }
  if (has_tool_response && s_id >= 0) {
    eog.erase(s_id);
    tokens_[s_id].attr = kAttrNormal;
  }
  eog_ids_.assign(eog.begin(), eog.end());
}

void Vocab::build_caches(const GgufFile& f) {
  const int32_t n = n_tokens();
  // Texts matched before segmentation, longest first. llama.cpp uses an unstable sort; ties
  // here keep ascending id order (only matters for equal-length overlapping texts).
  for (int32_t id = 0; id < n; ++id)
    if (tokens_[id].attr & (kAttrControl | kAttrUserDefined | kAttrUnknown)) special_by_len_.push_back(id);
  std::stable_sort(special_by_len_.begin(), special_by_len_.end(),
                   [&](int32_t a, int32_t b) { return tokens_[a].text.size() > tokens_[b].text.size(); });

  // token_to_piece(id, special = true) for every id, as llama.cpp's cache_token_to_piece.
  pieces_.resize(static_cast<size_t>(n));
  for (int32_t id = 0; id < n; ++id) {
    const TokenData& t = tokens_[id];
    if (t.attr & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      pieces_[id] = t.text;
    } else if (t.attr & kAttrNormal) {
      pieces_[id] = kind_ == VocabKind::Bpe ? bpe::decode_text(t.text) : unescape_whitespace(t.text);
    } else if ((t.attr & kAttrByte) && t.byte >= 0) {
      pieces_[id] = std::string(1, static_cast<char>(t.byte));
    }  // unused / undefined: ""
  }

  // Per-model attributes llama.cpp sets by name (after the caches), first rule that applies:
  // jina-v2 / nomic-bert-moe / jina-bert-v3 strip spaces left of "<mask>"; Phi-3 strips the
  // spaces right of its special tokens; modern-bert strips spaces left of "[MASK]".
  auto string_key = [&](const char* key) {
    const GgufValue* v = f.find(key);
    return v && v->type == GgufType::STRING ? v->str : std::string();
  };
  auto contains_any = [](const std::string& s, std::initializer_list<std::string_view> subs) {
    return std::any_of(subs.begin(), subs.end(), [&](std::string_view sub) { return s.find(sub) != std::string::npos; });
  };
  std::string name = string_key("general.name");
  std::transform(name.begin(), name.end(), name.begin(), [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); });
  if (contains_any(string_key(kKeyPre), {"jina-v2-de", "jina-v2-es", "jina-v2-code"}) ||
      contains_any(string_key("general.architecture"), {"nomic-bert-moe", "jina-bert-v3"})) {
    if (int32_t id = find_token("<mask>"); id >= 0) tokens_[id].attr |= kAttrLstrip;
  } else if (contains_any(name, {"phi-3", "phi3"})) {
    for (int32_t id : special_by_len_) tokens_[id].attr |= kAttrRstrip;
    if (int32_t id = find_token("</s>"); id >= 0) tokens_[id].attr |= kAttrRstrip;
    for (const char* text : {"<unk>", "<s>", "<|endoftext|>"})
      if (int32_t id = find_token(text); id >= 0) tokens_[id].attr &= ~static_cast<uint32_t>(kAttrRstrip);
  } else if (contains_any(name, {"modern-bert"})) {
    if (int32_t id = find_token("[MASK]"); id >= 0) tokens_[id].attr |= kAttrLstrip;
  }
}

bool Vocab::has_attr(int32_t id, uint32_t attr) const {
  return id >= 0 && id < n_tokens() && (tokens_[id].attr & attr) != 0;
}

bool Vocab::is_eog(int32_t id) const { return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id); }
bool Vocab::is_control(int32_t id) const { return has_attr(id, kAttrControl); }
bool Vocab::is_byte(int32_t id) const { return has_attr(id, kAttrByte); }
bool Vocab::is_user_defined(int32_t id) const { return has_attr(id, kAttrUserDefined); }

const std::string& Vocab::token_text(int32_t id) const {
  static const std::string kEmpty;
  return (id >= 0 && id < n_tokens()) ? tokens_[id].text : kEmpty;
}

float Vocab::token_score(int32_t id) const { return (id >= 0 && id < n_tokens()) ? tokens_[id].score : 0.0f; }

TokenType Vocab::token_type(int32_t id) const { return (id >= 0 && id < n_tokens()) ? tokens_[id].type : TokenType::Undefined; }

int32_t Vocab::find_token(std::string_view text) const {
  const auto it = text_to_id_.find(text);
  return it == text_to_id_.end() ? -1 : it->second;
}

// llama.cpp tokenizer_st_partition: for each special token (longest first), split every raw
// fragment at each non-overlapping occurrence, left to right.
void Vocab::partition_special(std::string_view text, bool parse_special, std::vector<Fragment>& frags) const {
  frags.clear();
  if (text.empty()) return;
  frags.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (const int32_t id : special_by_len_) {
    const TokenData& t = tokens_[id];
    // Control and unknown texts are plain text unless parse_special; user-defined always match.
    if (!parse_special && (t.attr & (kAttrControl | kAttrUnknown))) continue;
    if (text.find(t.text) == std::string_view::npos) continue;  // cheap skip, same result
    next.clear();
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        next.push_back(fr);
        continue;
      }
      size_t base = fr.offset;
      size_t len = fr.length;
      while (len > 0) {
        const size_t match = text.substr(0, base + len).find(t.text, base);
        if (match == std::string_view::npos) {
          next.push_back({-1, base, len});
          break;
        }
        if (match > base) {
          size_t left_len = match - base;
          if (t.attr & kAttrLstrip)
            while (left_len > 0 && std::isspace(static_cast<unsigned char>(text[base + left_len - 1]))) --left_len;
          if (left_len > 0) next.push_back({-1, base, left_len});
        }
        next.push_back({id, 0, 0});
        const size_t end = base + len;
        base = match + t.text.size();
        len = end - base;
        if (t.attr & kAttrRstrip)
          while (len > 0 && std::isspace(static_cast<unsigned char>(text[base]))) ++base, --len;
      }
    }
    frags.swap(next);
  }
}

std::vector<int32_t> Vocab::tokenize(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  std::vector<Fragment> frags;
  partition_special(text, parse_special, frags);

  out.reserve(text.size() / 3 + 2);
  if (add_special && add_bos_) out.push_back(bos_id_);  // load() guarantees bos_id_ >= 0
  if (kind_ == VocabKind::Bpe) {
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        out.push_back(fr.token);
      } else {
        bpe::tokenize_text(*this, pre_, merges_, ignore_merges_, text.substr(fr.offset, fr.length), out);
      }
    }
    if (add_special && add_eos_) out.push_back(eos_id_);
    return out;
  }
  // The space prefix goes before the first raw fragment and after every special token
  // (llama.cpp's is_prev_special starts true, also without BOS).
  bool is_prev_special = true;
  for (const Fragment& fr : frags) {
    if (fr.token >= 0) {
      out.push_back(fr.token);
      is_prev_special = true;
      continue;
    }
    const std::string escaped = spm::escape_whitespace(text.substr(fr.offset, fr.length), add_space_prefix_ && is_prev_special);
    spm::tokenize_escaped(*this, escaped, out);
    is_prev_special = false;
  }
  if (add_special && add_eos_) out.push_back(eos_id_);
  return out;
}

std::string Vocab::token_to_piece(int32_t id, bool special) const {
  if (id < 0 || id >= n_tokens()) return {};
  if (!special && (tokens_[id].attr & (kAttrUnknown | kAttrControl))) return {};
  return pieces_[id];
}

std::string Vocab::detokenize(const std::vector<int32_t>& ids, bool special) const { return detokenize(ids, special, false); }

std::string Vocab::detokenize(const std::vector<int32_t>& ids, bool special, bool remove_special) const {
  size_t begin = 0;
  size_t end = ids.size();
  bool remove_space = add_space_prefix_;
  if (remove_special && add_bos_ && end > begin && ids[begin] == bos_id_) {
    remove_space = false;
    ++begin;
  }
  if (remove_special && add_eos_ && end > begin && ids[end - 1] == eos_id_) --end;

  std::string out;
  for (size_t i = begin; i < end; ++i) {
    const int32_t id = ids[i];
    // Only the first token may lose its leading space, even if its piece is empty.
    const bool strip = remove_space;
    remove_space = false;
    if (id < 0 || id >= n_tokens()) continue;
    if (!special && (tokens_[id].attr & (kAttrUnknown | kAttrControl))) continue;
    const std::string& piece = pieces_[id];
    out.append(piece, (strip && !piece.empty() && piece[0] == ' ') ? 1 : 0);
  }
  if (clean_spaces_) clean_up_spaces(out);
  return out;
}

}  // namespace kvstash
