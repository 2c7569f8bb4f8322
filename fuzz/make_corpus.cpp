// kvstash_fuzz_corpus OUT_DIR: writes the seed corpora of the fuzz targets into
// OUT_DIR/<target>/, from kvstash's own code only: the GGUF writer and model generator, state
// files saved by the state writer from caches the tiny models filled by decoding, and the
// requests, texts and conversations listed below (from docs/api.md and the server tests).
// fuzz/make_corpus.sh runs it (plus `kvstash mkmodel` for two GGUF seeds). Deterministic.
#include <cstdio>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/context.h"
#include "fuzz_support.h"
#include "gguf/gguf_reader.h"
#include "gguf/gguf_writer.h"
#include "core/le.h"
#include "state/state.h"
#include "state/state_format.h"

using namespace kvstash;
namespace fs = std::filesystem;

namespace {

fs::path g_out;

void write(const std::string& target, const std::string& name, const std::vector<uint8_t>& bytes) {
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  FILE* f = std::fopen((dir / name).c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::fprintf(stderr, "make_corpus: cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

void write_text(const std::string& target, const std::string& name, uint8_t selector, const std::string& text) {
  std::vector<uint8_t> b{selector};
  b.insert(b.end(), text.begin(), text.end());
  write(target, name, b);
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r.is_ok()) {
    std::fprintf(stderr, "make_corpus: %s: %s\n", what, r.status().to_string().c_str());
    std::exit(1);
  }
  return std::move(r).value();
}

// ---- fuzz_gguf: the tiny vocabularies, a deepseek2 model and a llama model that states its
// alignment (the CLI adds two more llama ones) ----
void gen_model(const ModelGenSpec& spec, const fs::path& path) {
  if (Status st = model_gen_write(spec, path.string()); !st.is_ok()) {
    std::fprintf(stderr, "make_corpus: %s\n", st.to_string().c_str());
    std::exit(1);
  }
}

// The same GGUF written again with an explicit general.alignment key (the generator leaves it
// out), so that mutating it reaches the offset rules of other alignments.
std::vector<uint8_t> with_alignment_key(const fs::path& path, uint32_t alignment) {
  auto f = must(GgufFile::open(path.string()), "GgufFile::open");
  GgufWriter w;
  w.set_alignment(alignment);
  for (const auto& [k, v] : f->metadata())
    if (k != "general.alignment") w.add_value(k, v);
  for (const GgufTensorInfo& t : f->tensors()) {
    const uint8_t* data = t.data;
    const uint64_t n = t.n_bytes;
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), [data, n](uint8_t* dst, uint64_t) { std::memcpy(dst, data, n); });
  }
  return w.to_bytes();
}

void gguf_seeds() {
  write("fuzz_gguf", "tiny-vocab.gguf", fuzz::tiny_vocab_gguf());
  write("fuzz_gguf", "micro-vocab.gguf", fuzz::tiny_vocab_gguf(/*micro=*/true));
  const fs::path micro = g_out / "fuzz_gguf" / "micro-vocab.gguf";
  ModelGenSpec s = fuzz::tiny_model_spec(fuzz::TinyArch::Deepseek2);
  s.vocab_path = micro.string();
  gen_model(s, g_out / "fuzz_gguf" / "deepseek2-q8_0.gguf");
  ModelGenSpec l = fuzz::tiny_model_spec(fuzz::TinyArch::Llama);
  l.vocab_path = micro.string();
  l.n_embd = 32, l.n_layer = 1, l.n_head = l.n_head_kv = 1, l.n_ff = 32;
  const fs::path tmp = g_out / "fuzz_gguf" / ".llama.tmp";
  gen_model(l, tmp);
  write("fuzz_gguf", "llama-q8_0-align32.gguf", with_alignment_key(tmp, 32));
  fs::remove(tmp);
}

// ---- fuzz_state: state files saved from caches filled by decoding ----
struct Saved {
  std::string name;
  std::vector<uint8_t> bytes;
  bool context = false;
  fuzz::TinyArch arch;
  DType type_k, type_v;
};

// META's writer string names the build's commit (§4.1); the seeds carry a fixed one instead, so
// regenerating them at another commit gives the same bytes.
std::vector<uint8_t> fixed_writer(const std::vector<uint8_t>& f) {
  using namespace statefmt;
  const uint32_t hb = load_le<uint32_t>(f.data() + 16);
  const uint64_t len = load_le<uint64_t>(f.data() + hb + 8);
  const uint8_t* meta = f.data() + hb + kFrameBytes;
  const std::string writer = "kvstash (fuzz corpus)";
  std::vector<uint8_t> out(f.begin(), f.begin() + hb + kFrameBytes);
  store_le<uint64_t>(out.data() + hb + 8, 24 + 2 + writer.size());
  out.insert(out.end(), meta, meta + 24);  // created, n_ctx, n_tokens, saved sequence, n_logits
  out.push_back(static_cast<uint8_t>(writer.size()));
  out.push_back(0);
  out.insert(out.end(), writer.begin(), writer.end());
  out.resize(out.size() + kTrailerBytes);
  out.insert(out.end(), f.begin() + static_cast<std::ptrdiff_t>(hb + kFrameBytes + len + kTrailerBytes), f.end());
  fuzz::fix_state_checksums(out);
  return out;
}

// minor: the format minor to write (docs/state-format.md §2.1): 1 (CEL2 cells) or 0 (CELL).
std::vector<uint8_t> save_seq(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const float* logits, uint32_t n_logits,
                              uint16_t minor = 1) {
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  StateSaveOptions opt;
  opt.created_ms = 1700000000000ull;  // fixed, so the seeds are reproducible
  opt.format_minor = minor;
  opt.logits = logits;
  opt.n_logits = n_logits;
  must(state_write_seq(cache, seq, fp, opt, sink), "state_write_seq");
  return fixed_writer(out);
}

std::vector<Saved> save_states(fuzz::TinyArch arch, const Model& m, DType tk, DType tv) {
  const std::string tag = std::string(arch == fuzz::TinyArch::Llama ? "llama" : "deepseek2") + "-" + dtype_name(tk) +
                          (arch == fuzz::TinyArch::Llama ? std::string("-") + dtype_name(tv) : std::string());
  ContextParams cp;
  cp.n_ctx = fuzz::kStateCells;
  cp.n_batch = cp.n_ubatch = 8;
  cp.n_threads = 1;
  cp.type_k = tk;
  cp.type_v = tv;
  auto ctx = must(Context::create(m, cp), "Context::create");
  const ModelFingerprint& fp = m.fingerprint();
  const std::vector<int32_t> prompt = m.vocab().tokenize("Once upon a time", true);
  std::vector<Saved> out;
  // One sequence of three tokens, with the logits after its last token.
  const float* logits = must(ctx->eval(0, prompt.data(), 3, 0), "eval");
  out.push_back({tag + "-seq3-logits", save_seq(ctx->cache(), 0, fp, logits, fp.n_vocab), false, arch, tk, tv});
  // The same as format 1.0 (CELL records), which readers keep reading.
  out.push_back({tag + "-seq3-logits-v1.0", save_seq(ctx->cache(), 0, fp, logits, fp.n_vocab, 0), false, arch, tk, tv});
  // One token, no logits; an empty sequence.
  auto one = must(Context::create(m, cp), "Context::create");
  (void)must(one->eval(1, prompt.data(), 1, 0), "eval");
  out.push_back({tag + "-seq1", save_seq(one->cache(), 1, fp, nullptr, 0), false, arch, tk, tv});
  out.push_back({tag + "-seq-empty", save_seq(one->cache(), 2, fp, nullptr, 0), false, arch, tk, tv});
  // A whole context: sequence 0 shares its cells with sequence 1, which has one more token.
  ctx->cache().seq_cp(0, 1, -1, -1);
  (void)must(ctx->eval(1, prompt.data() + 3, 1, 3), "eval");
  std::vector<uint8_t> all;
  BufferSink sink(&all);
  StateSaveOptions opt;
  opt.created_ms = 1700000000000ull;
  must(state_write_all(ctx->cache(), fp, opt, sink), "state_write_all");
  out.push_back({tag + "-context", fixed_writer(all), true, arch, tk, tv});
  return out;
}

void write_state(const std::string& name, const fuzz::StateConfig& cfg, const std::vector<uint8_t>& file) {
  uint8_t b0, b1;
  if (!fuzz::encode_state_config(cfg, &b0, &b1)) {
    std::fprintf(stderr, "make_corpus: a state configuration without an encoding\n");
    std::exit(1);
  }
  std::vector<uint8_t> b{b0, b1};
  b.insert(b.end(), file.begin(), file.end());
  write("fuzz_state", name, b);
}

// Inputs of the bugs fuzzing found (issue 6), as tests/state/state_fuzz_findings_test.cpp
// builds them, for the tiny llama model.
void state_regressions(const Model& llama) {
  const ModelFingerprint& fp = llama.fingerprint();
  ContextParams cp;
  cp.n_ctx = fuzz::kStateCells;
  cp.n_threads = 1;
  cp.type_k = DType::F16;
  cp.type_v = DType::F32;
  auto ctx = must(Context::create(llama, cp), "Context::create");
  const int32_t tok = 1;
  (void)must(ctx->eval(0, &tok, 1, 0), "eval");
  // NaN and inf in a K row, denormals in a V row: converted into q8_0 / q4_0 (undefined
  // float -> int8 casts before the fix).
  KvCache& cache = ctx->cache();
  const KvRowSpec& ks = cache.layout().layer(0).streams[0];
  std::vector<float> k(ks.elems_per_row, 1.0f), v(cache.layout().layer(0).streams[1].elems_per_row, 0.0f);
  k[3] = NAN;
  k[40] = INFINITY;
  for (size_t j = 0; j < 32; ++j) v[j] = (static_cast<float>(j) - 8.0f) * 1e-40f;
  quantize_row_ref(DType::F16, k.data(), cache.row(0, 0, 0), ks.elems_per_row);
  quantize_row_ref(DType::F32, v.data(), cache.row(0, 1, 0), static_cast<int64_t>(v.size()));
  fuzz::StateConfig c;
  c.type_k = DType::Q8_0;
  c.type_v = DType::Q4_0;
  c.fix_checksums = true;
  write_state("regress-issue6-nonfinite-rows", c, save_seq(cache, 0, fp, nullptr, 0));
  // A META section of 0 bytes (memcpy to a null pointer before the fix).
  using namespace statefmt;
  std::vector<uint8_t> f(kHeaderBytes + kFrameBytes + kTrailerBytes, 0);
  std::memcpy(f.data(), kMagic, 8);
  store_le<uint16_t>(f.data() + 8, kMajor);
  store_le<uint32_t>(f.data() + 12, kEndianMarker);
  store_le<uint32_t>(f.data() + 16, kHeaderBytes);
  store_le<uint32_t>(f.data() + 20, 1);
  store_le<uint32_t>(f.data() + 32, 6);
  store_le<uint32_t>(f.data() + kHeaderBytes, kTagMeta);
  store_le<uint32_t>(f.data() + kHeaderBytes + 4, kFlagRequired);
  fuzz::fix_state_checksums(f);
  write_state("regress-issue6-empty-meta", c, f);
  // No tokens, 16 GiB rows: state_inspect allocated a row buffer of that size before the fix.
  KvLayout huge;
  if (!KvLayout::make(0, {{{KvStream::K, DType::F32, 0xFFFFFFE0u, 1}}}, &huge).empty()) std::exit(1);
  KvCache empty(huge);
  std::vector<uint8_t> h;
  BufferSink sink(&h);
  StateSaveOptions opt;
  opt.created_ms = 1700000000000ull;
  must(state_write_all(empty, fp, opt, sink), "state_write_all");
  c.read_all = true;
  write_state("regress-issue6-empty-huge-rows", c, fixed_writer(h));
}

void state_seeds() {
  struct Types {
    fuzz::TinyArch arch;
    DType k, v;
  };
  const Types kTypes[] = {{fuzz::TinyArch::Llama, DType::F16, DType::F16},      {fuzz::TinyArch::Llama, DType::Q8_0, DType::Q4_0},
                          {fuzz::TinyArch::Llama, DType::Q4_0, DType::F32},     {fuzz::TinyArch::Llama, DType::Q8_KV, DType::Q8_0},
                          {fuzz::TinyArch::Llama, DType::BF16, DType::F16},     {fuzz::TinyArch::Deepseek2, DType::F16, DType::F16},
                          {fuzz::TinyArch::Deepseek2, DType::Q8_0, DType::F16}, {fuzz::TinyArch::Deepseek2, DType::Q8_KV, DType::F16}};
  std::unique_ptr<Model> models[2] = {fuzz::load_tiny_model(fuzz::TinyArch::Llama), fuzz::load_tiny_model(fuzz::TinyArch::Deepseek2)};
  for (const Types& t : kTypes) {
    const Model& m = *models[static_cast<int>(t.arch)];
    for (const Saved& s : save_states(t.arch, m, t.k, t.v)) {
      // The matching live cache; then conversions, other targets and a fuller cache.
      fuzz::StateConfig c;
      c.arch = s.arch;
      c.type_k = s.type_k;
      c.type_v = s.type_v;
      c.read_all = s.context;
      c.dest = s.context ? 0 : 1;
      c.fix_checksums = true;  // mutations of these seeds then reach the checks behind the checksums
      auto emit = [&](const fuzz::StateConfig& cfg, const std::string& suffix) { write_state(s.name + suffix, cfg, s.bytes); };
      emit(c, "");
      fuzz::StateConfig conv = c;
      conv.type_k = s.type_k == DType::Q8_0 ? DType::F16 : DType::Q8_0;
      conv.type_v = s.type_v == DType::Q4_0 ? DType::F32 : DType::Q4_0;
      emit(conv, "-convert");
      fuzz::StateConfig busy = c;
      busy.prefill = 23;
      busy.dest = s.context ? 0 : 63;
      emit(busy, "-prefilled");
      fuzz::StateConfig as_is = c;
      as_is.fix_checksums = false;
      emit(as_is, "-checksummed");
    }
  }
  state_regressions(*models[0]);
}

// ---- fuzz_http_json: request bodies (selector: endpoint | chat format << 3) ----
void http_seeds() {
  struct Req {
    const char* name;
    uint8_t endpoint;
    const char* body;
  };
  const Req kReqs[] = {
      {"completion", 0, R"({"prompt":"Once upon a time","n_predict":32,"temperature":0})"},
      {"completion-ids", 0, R"({"prompt":[1,300,301],"n_predict":4,"temperature":0,"id_slot":2,"cache_prompt":true})"},
      {"completion-mixed", 0, R"({"prompt":[1,300,"upon a time"],"n_predict":4,"n_probs":3,"post_sampling_probs":true})"},
      {"completion-multi", 0, R"({"prompt":["Once upon a time",[1,300,301]],"n_predict":4,"return_tokens":true})"},
      {"completion-sampling", 0,
       R"({"prompt":"Hello","top_k":40,"top_p":0.95,"min_p":0.05,"repeat_penalty":1.1,"repeat_last_n":64,"seed":42,"stop":["girl nam","zzz"],"ignore_eos":true})"},
      {"completion-stream", 0, R"({"prompt":"Once upon a time","n_predict":8,"stream":true,"stream_options":{"include_usage":true}})"},
      {"completion-unsupported", 0, R"({"prompt":"x","grammar":"root ::= \"a\"","mirostat":2,"response_format":{"type":"json_object"}})"},
      {"completion-float-ints", 0, R"({"prompt":"x","n_predict":24.0,"max_tokens":1e3,"seed":-1,"n":1})"},
      {"oai-completion", 1, R"({"model":"m","prompt":"Once upon a time","max_tokens":8,"temperature":0,"logprobs":2})"},
      {"oai-completion-stream", 1, R"({"prompt":["a","b"],"max_tokens":8,"stream":false,"echo":false,"logprobs":true})"},
      {"chat", 2, R"({"messages":[{"role":"system","content":"You are helpful"},{"role":"user","content":"Hi"}],"max_tokens":16})"},
      {"chat-parts", 2,
       R"({"messages":[{"role":"user","content":[{"type":"text","text":"Tell me "},{"type":"text","text":"a story."}]}],"logprobs":true,"top_logprobs":2,"max_completion_tokens":2})"},
      {"chat-history", 2,
       R"({"messages":[{"role":"user","content":"Hello"},{"role":"assistant","content":"Hi there"},{"role":"user","content":"Who are you"}],"stream":true,"temperature":0.7})"},
      {"chat-tools", 2, R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}],"response_format":{"type":"text"}})"},
      {"tokenize", 3, R"({"content":"Once upon a time"})"},
      {"tokenize-flags", 3, R"({"content":"<s>x <|im_start|>user","add_special":true,"parse_special":false,"with_pieces":true})"},
      {"detokenize", 4, R"({"tokens":[1,300,301,302]})"},
      {"detokenize-empty", 4, R"({})"},
      {"slot-save", 5, R"({"filename":"story.bin"})"},
      {"slot-restore-link", 5, R"({"filename":"in"})"},
      {"slot-bad-name", 5, R"({"filename":"../etc/passwd"})"},
      {"rename", 6, R"({"filename":"b.bin"})"},
      {"rename-dir", 6, R"({"filename":"sub"})"},
      {"chat-unrecognized", 7, R"({"messages":[{"role":"user","content":"Hi"}]})"},
      {"malformed", 0, R"({"prompt": "unterminated)"},
      {"deep", 3, R"([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])"},
  };
  for (const Req& r : kReqs) write_text("fuzz_http_json", r.name, r.endpoint, r.body);
  // Issue 6: a "type" that is not a string made json::value() throw (a 500 instead of a 400).
  write_text("fuzz_http_json", "regress-issue6-response-format-type", 0, R"({"prompt":"x","response_format":{"type":5}})");
  write_text("fuzz_http_json", "regress-issue6-content-part-type", 2, R"({"messages":[{"role":"user","content":[{"type":1,"text":"x"}]}]})");
  // The chat request once per chat format.
  for (uint8_t f = 0; f < 12; ++f)
    write_text("fuzz_http_json", "chat-format-" + std::to_string(f), static_cast<uint8_t>(2 | f << 3), kReqs[12].body);
}

// ---- fuzz_tokenizer: texts (selector: vocab | add_special << 2 | parse_special << 3) ----
void tokenizer_seeds() {
  const char* kTexts[] = {
      "Hello world",
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine.",
      "  leading, trailing and  double  spaces  ",
      ("\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "d" "\xc3\xa9" " \xe2\x98\x83 \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82"),
      "tabs\tand\nnewlines\r\n\n",
      "<s>special</s> tokens <|endoftext|> <unk>",
      ("<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>deepseek \xc3\xb8 [PAD100015]"),
      "\xe2\x96\x81literal \xe2\x96\x81 escapes\xe2\x96\x81",
      "numbers 12345 3.14159 -7e10",
      "code: int main() { return 0; } // \"quoted\"",
      "he's they're I'm we've it'll ? ! . , ' quote ' ",
      "\xff\xfe invalid \xc0\x80 overlong \xed\xa0\x80 surrogate \xf4\x90\x80\x80 \xe4\xb8",
  };
  const uint8_t kSelectors[] = {0, 1, 2, 3, 4, 8, 12, 13, 14, 15};
  int n = 0;
  for (size_t i = 0; i < sizeof(kTexts) / sizeof(kTexts[0]); ++i)
    for (uint8_t sel : kSelectors) {
      if ((n++ % 3) != 0 && sel > 3) continue;  // every text for every vocabulary, flags on a third of them
      write_text("fuzz_tokenizer", "text-" + std::to_string(i) + "-" + std::to_string(sel), sel, kTexts[i]);
    }
  // Token ids for detokenize alone (selector bit 4): specials, byte tokens, the last ids and
  // out-of-range ones of every vocabulary.
  const uint32_t kIds[] = {1, 2, 0, 3, 13, 300, 29871, 50256, 100000, 100001, 100002, 511, 31999, 102399, 0xFFFFFFFFu, 220, 30, 0};
  std::string ids;
  for (uint32_t id : kIds)
    for (int b = 0; b < 4; ++b) ids += static_cast<char>((id >> (8 * b)) & 0xff);
  for (uint8_t vocab = 0; vocab < 4; ++vocab) write_text("fuzz_tokenizer", "ids-" + std::to_string(vocab), static_cast<uint8_t>(16 | vocab), ids);
}

// ---- fuzz_chat: template texts and conversations (selector: format | add_assistant << 4) ----
void chat_seeds() {
  const char* kTemplates[] = {
      "",
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
      "<|start_header_id|>' + role + '<|end_header_id|>",
      "[INST] <<SYS>>",
      "{{ '[INST] ' + content }}",
      "[SYSTEM_PROMPT] [INST]",
      "[AVAILABLE_TOOLS] [INST]",
      "<start_of_turn>user",
      "<|user|>\n{{ content }}<|endoftext|>",
      "### Instruction:\n ... <|EOT|>",
      "{{ 'Assistant: ' + message['content'] + eos_token }}",
      ("<\xef\xbd\x9cUser\xef\xbd\x9c>{{c}}<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>{{a}}<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"),
      "<|im_start|>user<|im_sep|>",
      "{{ messages | tojson }}",
  };
  const char* kConv[][2] = {{"system", "You are a helpful assistant"}, {"user", "Hello"},          {"assistant", "Hi there"},
                            {"user", "Who are you"},                   {"assistant", "   I am an assistant   "}, {"user", "Another question"}};
  std::string conv;
  for (const auto& m : kConv) conv += std::string(1, '\0') + m[0] + '\0' + m[1];
  for (size_t i = 0; i < sizeof(kTemplates) / sizeof(kTemplates[0]); ++i) {
    const uint8_t sel = static_cast<uint8_t>(i % 12 | (i % 2) << 4);
    write_text("fuzz_chat", "template-" + std::to_string(i), sel, kTemplates[i] + conv);
  }
  // One-byte roles (4: system, 1: user, 2: assistant, 3: tool) and a custom role, for every format.
  std::string short_roles;
  for (const char* field : {"", "\x04", " system text ", "\x01", "user text", "\x02", "assistant\ttext", "\x03", "tool output", "mod", "x"})
    short_roles += std::string(1, '\0') + field;
  short_roles.erase(0, 1);  // the template field is the first, empty one
  for (uint8_t f = 0; f < 12; ++f) write_text("fuzz_chat", "roles-" + std::to_string(f), static_cast<uint8_t>(f | 16), short_roles);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvstash_fuzz_corpus OUT_DIR   (writes OUT_DIR/<target>/ seed files)\n");
    return 2;
  }
  g_out = argv[1];
  gguf_seeds();
  state_seeds();
  http_seeds();
  tokenizer_seeds();
  chat_seeds();
  return 0;
}
