// Shared pieces of the libFuzzer targets and of the seed-corpus generator: failure reporting,
// the fixtures every target builds in-process (a tiny SPM vocabulary, tiny llama and deepseek2
// models made by src/model/model_gen), and the configuration bytes that fuzz_state reads in
// front of a state file. Fuzz harness code only: never linked into kvstash itself.
// Not thread-safe: fixtures are built once per process, before the first input.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "model/model_gen.h"

namespace kvstash::fuzz {

// Reports a broken invariant and aborts, so libFuzzer saves the input as a crash.
[[noreturn]] void fail(const char* file, int line, const std::string& what);
#define FUZZ_CHECK(cond, what)                                              \
  do {                                                                      \
    if (!(cond)) ::kvstash::fuzz::fail(__FILE__, __LINE__, #cond ": " + std::string(what)); \
  } while (0)

// Directory of the shared vocabularies: $KVSTASH_MODELS, else the build's KVSTASH_MODELS_DIR
// (../shared/models beside the checkout). Aborts with a clear message when `file` is missing.
std::string shared_model_path(const std::string& file);

// A vocab-only GGUF (tokenizer.ggml.model "llama", SPM): <unk>, <s>, </s>, the chatml markers
// as control tokens, the 256 byte tokens, the printable ASCII characters and every prefix of a
// few "▁word" pieces, so that SPM merges, byte fallback and special-token parsing all happen.
// Deterministic: the same bytes on every run. `micro` keeps only the special tokens, "▁" and
// the printable ASCII characters (about 100 tokens: small models for the GGUF seeds).
std::vector<uint8_t> tiny_vocab_gguf(bool micro = false);

// The tiny models fuzz_state restores into (and make_corpus saves from). Same spec, same seed,
// same weights hash on every run: the committed state seeds depend on it.
enum class TinyArch : uint8_t { Llama = 0, Deepseek2 = 1 };
ModelGenSpec tiny_model_spec(TinyArch arch);
// Writes tiny_vocab_gguf() and the model to temporary files, loads it and removes the files
// (the mapping outlives them). Aborts on failure (a harness bug, not an input).
std::unique_ptr<Model> load_tiny_model(TinyArch arch);

// ---- fuzz_state: two configuration bytes in front of the state file ----
// byte 0: bit 0 arch; bits 1-3 type_k; bits 4-5 type_v; bit 6 conversion refused; bit 7 kind
//         (0: state_read_seq, 1: state_read_all)
// byte 1: bits 0-1 target sequence (0, 1, 2, 63); bit 2: recompute the file's checksums and
//         size field before reading it (so mutations reach the checks behind them); bits 3-7
//         seed of the cells already in the cache before the restore (0: an empty cache)
constexpr uint32_t kStateCells = 8;
struct StateConfig {
  TinyArch arch = TinyArch::Llama;
  DType type_k = DType::F16;
  DType type_v = DType::F16;
  bool allow_convert = true;
  bool read_all = false;
  SeqId dest = 0;
  bool fix_checksums = false;
  uint8_t prefill = 0;  // 0..31
};
StateConfig decode_state_config(uint8_t b0, uint8_t b1);
// The bytes that decode to `c`; false when a field has no encoding (e.g. dest 5).
bool encode_state_config(const StateConfig& c, uint8_t* b0, uint8_t* b1);
// Rewrites the header's file-size field and checksum and every section checksum of a state
// file in place, walking its frames as far as they stay inside the buffer (§2, §3).
void fix_state_checksums(std::vector<uint8_t>& file);
// Fills the cache as the `prefill` seed says: deterministic cells (positions, sequence sets,
// tokens below n_vocab) and row bytes. 0 leaves the cache empty.
void prefill_cache(KvCache& cache, uint8_t prefill, int32_t n_vocab);

}  // namespace kvstash::fuzz
