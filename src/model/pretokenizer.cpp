// BPE pre-tokenizer: llama.cpp's regex lists (src/llama-vocab.cpp, llm_tokenizer_bpe) run on
// PCRE2, with the text prepared the way llama.cpp's unicode_regex_split (src/unicode.cpp)
// prepares it.
//
// How llama.cpp evaluates a list, and how we reproduce it:
//  - The text is decoded leniently to code points (invalid byte -> U+FFFD, see decode_at).
//  - The pieces start as one piece, the whole text. Each regex in turn is searched within each
//    current piece separately (the piece is the whole subject: lookaheads and `$` stop at its
//    end); every match and every unmatched gap between matches becomes a new piece.
//  - llama.cpp runs a regex on one of three engines. The gpt-2 and llama-3 regexes go to
//    hand-written matchers that use its Unicode tables (\s = the White_Space set below); regexes
//    with \p{..} go to std::regex over a "collapsed" text (each non-ASCII code point replaced by
//    a byte naming its category, non-ASCII whitespace by 0x0B); all others go to std::wregex
//    over the code points with non-ASCII whitespace replaced by 0x0B. All three agree with one
//    rule, which we give PCRE2: match over the code points with every non-ASCII White_Space
//    code point replaced by U+000B, with \s = ASCII whitespace (PCRE2 without PCRE2_UCP) and
//    \p{L}, \p{N}, \p{P} = the Unicode general categories (PCRE2_UTF). The replacement matters:
//    e.g. U+3000 lies inside deepseek's CJK class, yet llama.cpp never lets that class match it.
//  - `$` matches only at the end (PCRE2_DOLLAR_ENDONLY, as ECMAScript std::regex).
//  - The words are the pieces' original code points, re-encoded as UTF-8.
//  - One pattern is given to PCRE2 in an equivalent form (pcre2_form): deepseek's "\s+$" is
//    searched from every position of a whitespace run, each scan running to the run's end, so a
//    long run not at the end of a piece costs quadratic time (35 s for 100k spaces before a
//    digit with PCRE2). "(?<!\s)\s+$" finds the same leftmost match in linear time, since a
//    match can only start where the trailing whitespace run starts.
// Known limits: PCRE2 10.42 uses Unicode 14 for \p{..}, llama.cpp's tables a later version, so
// code points assigned since may be classified differently. None of the patterns can match the
// empty string, so std::regex_iterator's empty-match rule is not reproduced (we step over one).
#include "model/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>

namespace kvstash {
namespace {

constexpr uint32_t kReplacementChar = 0xFFFD;

// llama.cpp unicode_cpt_from_utf8 at t[i]: the sequence length (1-4) and its code point, or 0
// when llama.cpp throws (continuation or 0xF8+ lead byte, truncated or malformed sequence).
// Overlong forms and surrogates are accepted, as there. A 4-byte form above U+10FFFF decodes
// in llama.cpp but makes its later unicode_cpt_to_utf8 throw; we call it invalid here.
size_t decode_at(std::string_view t, size_t i, uint32_t* cpt) {
  const auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(t[i + k])); };
  const auto cont = [&](size_t k) { return i + k < t.size() && (byte(k) & 0xC0) == 0x80; };
  const uint32_t b0 = byte(0);
  if (b0 < 0x80) {
    *cpt = b0;
    return 1;
  }
  if (!(b0 & 0x40)) return 0;
  if (!(b0 & 0x20)) {
    if (!cont(1)) return 0;
    *cpt = ((b0 & 0x1F) << 6) | (byte(1) & 0x3F);
    return 2;
  }
  if (!(b0 & 0x10)) {
    if (!cont(1) || !cont(2)) return 0;
    *cpt = ((b0 & 0x0F) << 12) | ((byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
    return 3;
  }
  if (!(b0 & 0x08)) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    *cpt = ((b0 & 0x07) << 18) | ((byte(1) & 0x3F) << 12) | ((byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
    return *cpt <= 0x10FFFF ? 4 : 0;
  }
  return 0;
}

// llama.cpp unicode_set_whitespace: the Unicode White_Space property.
bool is_whitespace(uint32_t cpt) {
  return (cpt >= 0x09 && cpt <= 0x0D) || cpt == 0x20 || cpt == 0x85 || cpt == 0xA0 || cpt == 0x1680 ||
         (cpt >= 0x2000 && cpt <= 0x200A) || cpt == 0x2028 || cpt == 0x2029 || cpt == 0x202F || cpt == 0x205F || cpt == 0x3000;
}

// The code point PCRE2 sees in place of `cpt` (see the file comment). Surrogates, which llama.cpp
// keeps but PCRE2 cannot take in UTF mode, become U+FFFD: neither is in any class of the
// supported lists (both are "other" for \p{L}, \p{N}, \p{P} and \s).
uint32_t subject_cpt(uint32_t cpt) {
  if (cpt >= 0x80 && is_whitespace(cpt)) return 0x0B;
  if (cpt >= 0xD800 && cpt <= 0xDFFF) return kReplacementChar;
  return cpt;
}

size_t utf8_len_at(std::string_view s, size_t i) {
  const auto b = static_cast<uint8_t>(s[i]);
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;  // s is valid UTF-8 here
}

// ---- llama.cpp's regex lists (src/llama-vocab.cpp, llm_tokenizer_bpe constructor) ----
// Non-ASCII characters are written as \u escapes so that no editor can NFC-normalise them
// (deepseek's class holds U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126 and U+212A, which NFC would
// turn into other code points); the bytes are those of llama.cpp's source.

// LLAMA_VOCAB_PRE_TYPE_GPT2 (and the second regex of the default list).
constexpr const char* kGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";

const std::vector<std::string>& regexes_default() {
  static const std::vector<std::string> kList = {
      "[\\p{P}\\$\\+<=>\\^~\\|]+",
      kGpt2Regex,
      "\\p{N}+",
      "[0-9][0-9][0-9]",
  };
  return kList;
}

const std::vector<std::string>& regexes_gpt2() {
  static const std::vector<std::string> kList = {kGpt2Regex};
  return kList;
}

// LLAMA_VOCAB_PRE_TYPE_LLAMA3: the "adapted" form llama.cpp uses (case-insensitive group
// spelled out), which its unicode_regex_split_custom_llama3 implements.
const std::vector<std::string>& regexes_llama3() {
  static const std::vector<std::string> kList = {
      "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  };
  return kList;
}

// LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM.
const std::vector<std::string>& regexes_deepseek_llm() {
  static const std::vector<std::string> kList = {
      "[\r\n]",
      "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376\u0377"
      "\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5"
      "\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D"
      "\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4"
      "\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D"
      "\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4"
      "\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
      "\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3\U000104D8-\U000104FB"
      "\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF\U0001E900-\U0001E943]+",
      "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
      "\\s+$",
      "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+",
      "\\p{N}+",
  };
  return kList;
}

// The pattern PCRE2 compiles for a llama.cpp regex: the regex itself, or an equivalent form that
// PCRE2 searches in linear time (see the file comment).
std::string_view pcre2_form(std::string_view re) {
  if (re == "\\s+$") return "(?<!\\s)\\s+$";
  return re;
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
using CodePtr = std::unique_ptr<pcre2_code, CodeDeleter>;
using MatchDataPtr = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

}  // namespace

std::vector<uint32_t> utf8_to_cpts_lenient(std::string_view text) {
  std::vector<uint32_t> cpts;
  cpts.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    uint32_t cpt = 0;
    const size_t n = decode_at(text, i, &cpt);
    if (n == 0) {
      cpts.push_back(kReplacementChar);
      ++i;
    } else {
      cpts.push_back(cpt);
      i += n;
    }
  }
  return cpts;
}

void append_utf8(std::string& out, uint32_t cpt) {
  if (cpt <= 0x7F) {
    out += static_cast<char>(cpt);
  } else if (cpt <= 0x7FF) {
    out += static_cast<char>(0xC0 | (cpt >> 6));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  } else if (cpt <= 0xFFFF) {
    out += static_cast<char>(0xE0 | (cpt >> 12));
    out += static_cast<char>(0x80 | ((cpt >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | ((cpt >> 18) & 0x07));
    out += static_cast<char>(0x80 | ((cpt >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cpt >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  }
}

Result<PreTokenizerKind> pre_tokenizer_kind_from_name(std::string_view name) {
  if (name.empty() || name == "default") return PreTokenizerKind::Default;
  if (name == "gpt-2") return PreTokenizerKind::Gpt2;
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") return PreTokenizerKind::Llama3;
  if (name == "deepseek-llm") return PreTokenizerKind::DeepseekLlm;
  return unsupported("vocab: pre-tokenizer '" + std::string(name) +
                     "' in tokenizer.ggml.pre is not supported (supported: 'default', 'gpt-2', 'llama-bpe', 'llama3', "
                     "'llama-v3', 'deepseek-llm')");
}

const std::vector<std::string>& pre_tokenizer_regexes(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::Gpt2: return regexes_gpt2();
    case PreTokenizerKind::Llama3: return regexes_llama3();
    case PreTokenizerKind::DeepseekLlm: return regexes_deepseek_llm();
    case PreTokenizerKind::Default: break;
  }
  return regexes_default();
}

struct PreTokenizer::Impl {
  std::vector<CodePtr> codes;  // one per regex, in list order
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

Result<PreTokenizer> PreTokenizer::create(PreTokenizerKind kind) {
  auto impl = std::make_unique<Impl>();
  for (const std::string& regex : pre_tokenizer_regexes(kind)) {
    const std::string_view re = pcre2_form(regex);
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    CodePtr code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re.data()), re.size(), PCRE2_UTF | PCRE2_DOLLAR_ENDONLY, &err,
                               &err_offset, nullptr));
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      return internal_error("pre-tokenizer: PCRE2 rejected regex '" + std::string(re) + "' at offset " + std::to_string(err_offset) +
                            ": " + reinterpret_cast<const char*>(msg));
    }
    impl->codes.push_back(std::move(code));
  }
  PreTokenizer p;
  p.kind_ = kind;
  p.impl_ = std::move(impl);
  return p;
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string> words;
  if (text.empty()) return words;
  const std::vector<uint32_t> cpts = utf8_to_cpts_lenient(text);
  const size_t n_cpts = cpts.size();

  // The PCRE2 subject, with the byte offset of each code point and back.
  std::string subject;
  subject.reserve(text.size() + 8);
  std::vector<size_t> cpt_offset(n_cpts + 1);
  for (size_t i = 0; i < n_cpts; ++i) {
    cpt_offset[i] = subject.size();
    append_utf8(subject, subject_cpt(cpts[i]));
  }
  cpt_offset[n_cpts] = subject.size();
  std::vector<size_t> offset_cpt(subject.size() + 1, 0);  // valid at character starts only
  for (size_t i = 0; i <= n_cpts; ++i) offset_cpt[cpt_offset[i]] = i;

  // Piece lengths in code points, as llama.cpp's bpe_offsets.
  std::vector<size_t> pieces = {n_cpts};
  std::vector<size_t> next;
  if (impl_ && !impl_->codes.empty()) {
    MatchDataPtr md(pcre2_match_data_create(1, nullptr));
    if (!md) {  // out of memory: keep the text as one word rather than fail
      pieces.assign(1, n_cpts);
    } else {
      for (const CodePtr& code : impl_->codes) {
        next.clear();
        size_t piece_begin = 0;  // code points
        for (const size_t piece_len : pieces) {
          const size_t byte_begin = cpt_offset[piece_begin];
          const size_t n_bytes = cpt_offset[piece_begin + piece_len] - byte_begin;
          const auto* base = reinterpret_cast<PCRE2_SPTR>(subject.data() + byte_begin);
          size_t gap_begin = piece_begin;  // first code point not yet assigned to a piece
          size_t pos = 0;                  // byte offset in the piece where the next search starts
          while (pos < n_bytes) {
            // NO_UTF_CHECK: the subject is valid UTF-8 by construction and pos is a char start.
            const int rc = pcre2_match(code.get(), base, n_bytes, pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
            // NOMATCH ends the piece; a resource limit (pathological input; llama.cpp's std::regex
            // would throw) leaves the rest of the piece unsplit.
            if (rc < 0) break;
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
            if (ov[1] < ov[0] || ov[1] > n_bytes) break;
            if (ov[1] == ov[0]) {  // empty match: not produced by the supported lists
              pos = ov[1] + (ov[1] < n_bytes ? utf8_len_at(subject, byte_begin + ov[1]) : 1);
              continue;
            }
            const size_t match_begin = offset_cpt[byte_begin + ov[0]];
            const size_t match_end = offset_cpt[byte_begin + ov[1]];
            if (match_begin > gap_begin) next.push_back(match_begin - gap_begin);
            next.push_back(match_end - match_begin);
            gap_begin = match_end;
            pos = ov[1];
          }
          if (gap_begin < piece_begin + piece_len) next.push_back(piece_begin + piece_len - gap_begin);
          piece_begin += piece_len;
        }
        pieces.swap(next);
      }
    }
  }

  words.reserve(pieces.size());
  size_t begin = 0;
  for (const size_t len : pieces) {
    std::string word;
    word.reserve(len * 2);
    for (size_t i = begin; i < begin + len; ++i) append_utf8(word, cpts[i]);
    words.push_back(std::move(word));
    begin += len;
  }
  return words;
}

}  // namespace kvstash
