#include "fuzz_support.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>

#include <xxhash.h>

#include <algorithm>

#include "core/le.h"
#include "gguf/gguf_writer.h"
#include "state/state_format.h"

namespace kvstash::fuzz {

void fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "\n==kvstash-fuzz== invariant broken at %s:%d\n  %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string shared_model_path(const std::string& file) {
  const char* env = std::getenv("KVSTASH_MODELS");
  const std::string dir = env && *env ? env : KVSTASH_FUZZ_MODELS_DIR;
  const std::string path = dir + "/" + file;
  if (!std::filesystem::is_regular_file(path)) {
    std::fprintf(stderr,
                 "kvstash-fuzz: fixture '%s' not found (looked in '%s'; set KVSTASH_MODELS to the shared/models directory)\n",
                 file.c_str(), dir.c_str());
    std::exit(1);
  }
  return path;
}

std::vector<uint8_t> tiny_vocab_gguf(bool micro) {
  std::vector<std::string> texts;
  std::vector<float> scores;
  std::vector<int32_t> types;
  std::set<std::string> seen;
  auto add = [&](const std::string& t, float score, TokenType type) {
    if (!seen.insert(t).second) return;
    texts.push_back(t);
    scores.push_back(score);
    types.push_back(static_cast<int32_t>(type));
  };
  add("<unk>", 0.0f, TokenType::Unknown);
  add("<s>", 0.0f, TokenType::Control);
  add("</s>", 0.0f, TokenType::Control);
  add("<|im_start|>", 0.0f, TokenType::Control);
  add("<|im_end|>", 0.0f, TokenType::Control);
  for (int b = 0; b < (micro ? 0 : 256); ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 0.0f, TokenType::Byte);
  }
  const std::string sp = "\xe2\x96\x81";  // U+2581, SPM's escaped space
  add(sp, -1.0f, TokenType::Normal);
  for (char c = '!'; c <= '~'; ++c) add(std::string(1, c), -2.0f, TokenType::Normal);
  add("\xc3\xa9", -2.0f, TokenType::Normal);          // é
  add("\xe4\xb8\x96", -2.0f, TokenType::Normal);      // 世
  add("\xe7\x95\x8c", -2.0f, TokenType::Normal);      // 界
  // Every prefix of each piece (from two characters on) is a token, so SPM can merge any of
  // them pairwise from single characters; longer pieces score higher.
  const char* pieces[] = {"Once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "She", "loved",
                          "to", "play", "the", "and", "in", "park", "Hello", "world", "story", "Tell", "me", "Hi",
                          "You", "are", "helpful", "assistant", "user", "system", "\xc3\xa9t\xc3\xa9", "\xe4\xb8\x96\xe7\x95\x8c"};
  for (const char* p : pieces) {
    if (micro) break;
    for (const std::string& base : {sp + p, std::string(p)}) {
      size_t n_chars = 0;
      for (size_t i = 1; i <= base.size(); ++i) {
        if (i < base.size() && (static_cast<uint8_t>(base[i]) & 0xC0) == 0x80) continue;  // inside a character
        ++n_chars;  // base[0, i) holds n_chars characters
        if (n_chars >= 2) add(base.substr(0, i), static_cast<float>(n_chars) - 10.0f, TokenType::Normal);
      }
    }
  }
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "kvstash-fuzz-tiny-vocab");
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", texts);
  w.add_f32_array("tokenizer.ggml.scores", scores);
  w.add_i32_array("tokenizer.ggml.token_type", types);
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);
  w.add_u32("tokenizer.ggml.unknown_token_id", 0);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_bool("tokenizer.ggml.add_eos_token", false);
  return w.to_bytes();
}

ModelGenSpec tiny_model_spec(TinyArch arch) {
  ModelGenSpec s;
  s.type = DType::Q8_0;
  s.seed = 7;
  s.n_ctx_train = 256;
  if (arch == TinyArch::Llama) {
    s.arch = "llama";
    s.name = "kvstash-fuzz-llama";
    s.n_embd = 64, s.n_layer = 2, s.n_head = 2, s.n_head_kv = 2, s.n_ff = 64;  // K, V rows: 2 heads x 32
    return s;
  }
  // deepseek2: one MLA latent row of 32 rope + 32 latent elements per layer; a dense layer, then
  // a MoE layer. Every width is a multiple of 32 so every cache type can hold the rows.
  s.arch = "deepseek2";
  s.name = "kvstash-fuzz-deepseek2";
  s.n_embd = 32, s.n_layer = 2, s.n_head = 2, s.n_head_kv = 2, s.n_ff = 32;
  s.n_rot = 32, s.head_dim_nope = 32, s.head_dim_v = 32, s.n_lora_kv = 32, s.n_lora_q = 0;
  s.n_layer_dense_lead = 1, s.n_expert = 4, s.n_expert_used = 2, s.n_expert_shared = 1, s.n_ff_exp = 32;
  s.rms_eps = 1e-6f;
  return s;
}

std::unique_ptr<Model> load_tiny_model(TinyArch arch) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kvstash-fuzz-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(__FILE__, __LINE__, "cannot create " + dir.string() + ": " + ec.message());
  const std::string vocab_path = (dir / "vocab.gguf").string(), model_path = (dir / "model.gguf").string();
  const std::vector<uint8_t> vocab = tiny_vocab_gguf();
  FILE* f = std::fopen(vocab_path.c_str(), "wb");
  if (!f || std::fwrite(vocab.data(), 1, vocab.size(), f) != vocab.size() || std::fclose(f) != 0)
    fail(__FILE__, __LINE__, "cannot write " + vocab_path);
  ModelGenSpec spec = tiny_model_spec(arch);
  spec.vocab_path = vocab_path;
  Status st = model_gen_write(spec, model_path);
  if (!st.is_ok()) fail(__FILE__, __LINE__, "model_gen_write: " + st.to_string());
  auto m = Model::load(model_path);
  if (!m.is_ok()) fail(__FILE__, __LINE__, "Model::load: " + m.status().to_string());
  fs::remove_all(dir, ec);
  return std::move(m).value();
}

namespace {
constexpr DType kTypesK[8] = {DType::F16, DType::F32, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV, DType::F16, DType::Q8_0};
constexpr DType kTypesV[4] = {DType::F16, DType::Q8_0, DType::Q4_0, DType::F32};
constexpr SeqId kSeqs[4] = {0, 1, 2, 63};
}  // namespace

StateConfig decode_state_config(uint8_t b0, uint8_t b1) {
  StateConfig c;
  c.arch = (b0 & 1) ? TinyArch::Deepseek2 : TinyArch::Llama;
  c.type_k = kTypesK[(b0 >> 1) & 7];
  c.type_v = kTypesV[(b0 >> 4) & 3];
  c.allow_convert = !((b0 >> 6) & 1);
  c.read_all = (b0 >> 7) & 1;
  c.dest = kSeqs[b1 & 3];
  c.fix_checksums = (b1 >> 2) & 1;
  c.prefill = static_cast<uint8_t>(b1 >> 3);
  return c;
}

bool encode_state_config(const StateConfig& c, uint8_t* b0, uint8_t* b1) {
  int k = -1, v = -1, d = -1;
  for (int i = 0; i < 8 && k < 0; ++i)
    if (kTypesK[i] == c.type_k) k = i;
  for (int i = 0; i < 4 && v < 0; ++i)
    if (kTypesV[i] == c.type_v) v = i;
  for (int i = 0; i < 4 && d < 0; ++i)
    if (kSeqs[i] == c.dest) d = i;
  if (k < 0 || v < 0 || d < 0 || c.prefill > 31) return false;
  *b0 = static_cast<uint8_t>((c.arch == TinyArch::Deepseek2 ? 1 : 0) | k << 1 | v << 4 | (c.allow_convert ? 0 : 1) << 6 |
                             (c.read_all ? 1 : 0) << 7);
  *b1 = static_cast<uint8_t>(d | (c.fix_checksums ? 1 : 0) << 2 | c.prefill << 3);
  return true;
}

void fix_state_checksums(std::vector<uint8_t>& file) {
  using namespace statefmt;
  if (file.size() < kHeaderBytes) return;
  store_le<uint64_t>(file.data() + 24, file.size());
  const uint32_t header_bytes = load_le<uint32_t>(file.data() + 16);
  if (header_bytes >= kHeaderBytes && header_bytes <= file.size()) {
    store_le<uint64_t>(file.data() + 56, 0);
    store_le<uint64_t>(file.data() + 56, XXH3_64bits(file.data(), header_bytes));
  }
  uint64_t off = std::max<uint64_t>(kHeaderBytes, header_bytes);
  while (off <= file.size() && file.size() - off >= kFrameBytes + kTrailerBytes) {
    const uint64_t len = load_le<uint64_t>(file.data() + off + 8);
    if (len > file.size() - off - kFrameBytes - kTrailerBytes) return;
    const uint8_t* payload = file.data() + off + kFrameBytes;
    store_le<uint64_t>(file.data() + off + kFrameBytes + len, XXH3_64bits(payload, len));
    off += kFrameBytes + len + kTrailerBytes;
  }
}

void prefill_cache(KvCache& cache, uint8_t prefill, int32_t n_vocab) {
  if (prefill == 0) return;
  uint32_t s = prefill * 2654435761u + 12345u;
  auto next = [&s] {
    s = s * 1664525u + 1013904223u;
    return s >> 8;
  };
  for (uint32_t c = 0; c < cache.n_cells(); ++c) {
    const uint32_t r = next();
    if (r % 4 == 0) continue;  // a free cell
    uint64_t seqs = 0;
    for (int j = 0; j < 4; ++j)
      if ((r >> (2 + j)) & 1) seqs |= uint64_t(1) << kSeqs[j];
    if (seqs == 0) seqs = uint64_t(1) << kSeqs[(r >> 6) & 3];
    const int32_t token = static_cast<int32_t>((r >> 8) % uint32_t(n_vocab + 1)) - 1;
    cache.cell_assign_seqs(c, static_cast<int32_t>(c), seqs, token);  // one position per cell: never twice per sequence
  }
  const KvLayout& L = cache.layout();
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si)
      for (uint32_t c = 0; c < cache.n_cells(); ++c) {
        uint8_t* row = cache.row(il, si, c);
        for (size_t b = 0; b < L.layer(il).streams[si].row_bytes; ++b) row[b] = static_cast<uint8_t>(next());
      }
}

}  // namespace kvstash::fuzz
