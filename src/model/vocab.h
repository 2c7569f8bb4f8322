// Vocabulary and tokenizer front end: token texts, scores, types and special ids read from the
// GGUF tokenizer.ggml.* metadata, plus tokenize / token_to_piece / detokenize that reproduce
// llama.cpp (llama-vocab.cpp) bit for bit, for SPM ("llama") and byte-level BPE ("gpt2")
// vocabularies; BPE with the pre-tokenizers listed in pretokenizer.h.
// Owns: its own copy of the token table, the BPE merge table and pre-tokenizer, and the lookup
// caches built once in from_gguf.
// Never throws, never aborts on bad metadata (it is validated into a Status); any id is accepted
// by the const accessors (out of range -> empty/neutral answer). Thread-safe: immutable after load.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "model/pretokenizer.h"
#include "model/tokenizer_bpe.h"

namespace kvstash {

class GgufFile;

// Token types as stored in tokenizer.ggml.token_type (llama.cpp's llama_token_type).
enum class TokenType : int32_t { Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

enum class VocabKind { Spm, Bpe };

class Vocab {
 public:
  // Reads tokenizer.ggml.* from `f` and validates it. Errors name the offending key:
  //   NotFound        tokenizer.ggml.model / tokenizer.ggml.tokens / (BPE) tokenizer.ggml.merges
  //                   missing
  //   InvalidArgument a key has the wrong GGUF type
  //   Corruption      array lengths differ, special id out of range, duplicate token text,
  //                   malformed <0xNN> byte token, NaN score, add_bos/add_eos without the token,
  //                   (BPE) a tokenizer.ggml.merges entry that is not "left right" (the error
  //                   names the index)
  //   Unsupported     tokenizer model other than "llama" (SPM) and "gpt2" (BPE); BPE with a
  //                   tokenizer.ggml.pre that pretokenizer.h does not list (named in the error)
  // Special ids equal to 0xFFFFFFFF (or a negative integer) mean "not set" (llama.cpp's
  // converters write that) and keep llama.cpp's default (SPM: bos 1, eos 2, unk 0; BPE: bos 11,
  // eos 11, no unk). BPE adds no BOS by default, except llama-3 ("llama-bpe"); add_bos_token
  // overrides either way.
  static Result<Vocab> from_gguf(const GgufFile& f);

  Vocab(Vocab&&) = default;
  Vocab& operator=(Vocab&&) = default;
  Vocab(const Vocab&) = delete;  // the tables are large; nothing needs a deep copy yet
  Vocab& operator=(const Vocab&) = delete;

  VocabKind kind() const { return kind_; }
  int32_t n_tokens() const { return static_cast<int32_t>(tokens_.size()); }

  // Special ids; -1 when the vocab has none.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t eot_id() const { return eot_id_; }
  int32_t eom_id() const { return eom_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t pad_id() const { return pad_id_; }
  // SPM: the byte token for '\n'; BPE: the first id of tokenize("\n"); else pad_id() (as it
  // was before the special ids were read, as llama.cpp).
  int32_t nl_id() const { return nl_id_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  // llama.cpp clean_spaces: detokenize() drops the space before ?!., and around some
  // apostrophes. BPE: true, except deepseek-llm; SPM: false.
  bool clean_spaces() const { return clean_spaces_; }
  // BPE: llama.cpp ignore_merges (llama-3): a pre-tokenized word that is a token is not merged.
  bool ignore_merges() const { return ignore_merges_; }
  // BPE: the pre-tokenizer chosen by tokenizer.ggml.pre and the number of distinct merges.
  // SPM: an empty pre-tokenizer and 0.
  const PreTokenizer& pre_tokenizer() const { return pre_; }
  size_t n_merges() const { return merges_.size(); }

  // End-of-generation: eos, eot, eom, fim pad/rep/sep and the llama.cpp list of EOG texts.
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }  // sorted ascending
  bool is_control(int32_t id) const;
  bool is_byte(int32_t id) const;
  bool is_user_defined(int32_t id) const;

  // Per-token data; out-of-range ids give "", 0.0f and TokenType::Undefined.
  const std::string& token_text(int32_t id) const;
  float token_score(int32_t id) const;
  TokenType token_type(int32_t id) const;  // as stored in the GGUF (llama.cpp may add the control attribute)

  // Exact text -> id lookup (no allocation); -1 when absent.
  int32_t find_token(std::string_view text) const;
  // Token for one byte. SPM: "<0xNN>", else the one-byte token; BPE: the byte-level character
  // (bpe::byte_to_unicode). -1 when the vocab has none.
  int32_t byte_to_token(uint8_t byte) const { return byte_to_token_[byte]; }

  // llama.cpp llama_tokenize(). add_special: prepend BOS if add_bos(), append EOS if add_eos().
  // parse_special: control and unknown token texts inside `text` become those ids.
  // User-defined token texts are always matched (as in llama.cpp). Any bytes are accepted
  // (invalid UTF-8 included). SPM: bytes that no token covers become byte tokens, or unk_id()
  // when the vocab has no byte token for them, or are dropped when it has no unk either.
  // BPE: text is decoded as llama.cpp does (an invalid byte becomes U+FFFD, see
  // PreTokenizer::split), so detokenize() returns it re-encoded; a symbol with no token falls
  // back to its one-byte tokens, and bytes without one are dropped.
  std::vector<int32_t> tokenize(std::string_view text, bool add_special, bool parse_special = false) const;

  // llama.cpp llama_token_to_piece(lstrip = 0): normal tokens: SPM '▁' -> ' ', BPE byte-level
  // characters -> bytes (bpe::decode_text); <0xNN> -> the raw byte, control/unknown -> "" unless
  // `special`, user-defined -> its text, unused or undefined -> "". Out-of-range ids give "".
  std::string token_to_piece(int32_t id, bool special = false) const;

  // llama.cpp common_detokenize(ids, special) = llama_detokenize(remove_special = false):
  // pieces concatenated; when add_space_prefix(), one leading space of the FIRST token's piece
  // is dropped (the space tokenize added); then, when clean_spaces(), llama.cpp's space clean-up
  // (so for GPT-2 detokenize(tokenize(" ?")) is "?"). Out-of-range ids contribute "".
  std::string detokenize(const std::vector<int32_t>& ids, bool special = false) const;
  // Full llama_detokenize: remove_special also drops a leading BOS (then no space is removed)
  // and a trailing EOS, when the vocab adds them.
  std::string detokenize(const std::vector<int32_t>& ids, bool special, bool remove_special) const;

 private:
  // llama.cpp token attributes (llama_token_attr), a bit set derived from TokenType.
  enum Attr : uint32_t {
    kAttrUnknown = 1u << 0,
    kAttrUnused = 1u << 1,
    kAttrNormal = 1u << 2,
    kAttrControl = 1u << 3,
    kAttrUserDefined = 1u << 4,
    kAttrByte = 1u << 5,
    kAttrLstrip = 1u << 7,
    kAttrRstrip = 1u << 8,
  };
  struct TokenData {
    std::string text;
    float score = 0.0f;
    TokenType type = TokenType::Normal;
    uint32_t attr = kAttrNormal;
    int16_t byte = -1;  // byte tokens: the byte value of "<0xNN>"
  };
  struct TextHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Raw-text fragment [offset, offset + length) of the input, or one special token.
  struct Fragment {
    int32_t token = -1;  // >= 0: a special token
    size_t offset = 0;
    size_t length = 0;
  };

  Vocab() = default;
  Status load(const GgufFile& f);
  Status load_tokens(const GgufFile& f);
  Status load_bpe_model(const GgufFile& f);
  Status load_merges(const GgufFile& f);
  Status load_special_ids(const GgufFile& f);
  void detect_special_by_text();
  void build_caches(const GgufFile& f);
  bool has_attr(int32_t id, uint32_t attr) const;
  void partition_special(std::string_view text, bool parse_special, std::vector<Fragment>& frags) const;

  VocabKind kind_ = VocabKind::Spm;
  std::vector<TokenData> tokens_;
  std::unordered_map<std::string, int32_t, TextHash, std::equal_to<>> text_to_id_;
  std::vector<std::string> pieces_;        // token_to_piece(id, special = true), per id
  std::vector<int32_t> special_by_len_;    // control/user-defined/unknown ids, longest text first
  std::vector<int32_t> eog_ids_;
  int32_t byte_to_token_[256] = {};

  int32_t bos_id_ = -1, eos_id_ = -1, eot_id_ = -1, eom_id_ = -1, unk_id_ = -1;
  int32_t sep_id_ = -1, pad_id_ = -1, mask_id_ = -1, nl_id_ = -1;
  int32_t fim_pre_id_ = -1, fim_suf_id_ = -1, fim_mid_id_ = -1;
  int32_t fim_pad_id_ = -1, fim_rep_id_ = -1, fim_sep_id_ = -1;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
  bool clean_spaces_ = false, ignore_merges_ = false;
  PreTokenizer pre_;         // BPE only
  bpe::MergeRanks merges_;   // BPE only
};

}  // namespace kvstash
