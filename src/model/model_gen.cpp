#include "model/model_gen.h"

#include <cmath>
#include <thread>

#include "gguf/gguf_reader.h"
#include "gguf/gguf_writer.h"

namespace kvstash {
namespace {

// splitmix64: tiny, fast, and the same on every platform.
inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [-a, a).
inline float uniform(uint64_t& s, float a) {
  return static_cast<float>((static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0) * a);
}

uint64_t hash_name(const std::string& n, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : n) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Fills a [n_rows, n_cols] tensor of `type` with U(-a, a) values, rows in parallel.
GgufWriter::FillFn random_matrix(const std::string& name, DType type, uint64_t n_cols, uint64_t n_rows, float a, uint64_t seed) {
  return [=](uint8_t* dst, uint64_t) {
    const size_t rb = dtype_row_bytes(type, n_cols);
    const unsigned n_thr = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    std::vector<std::thread> th;
    for (unsigned t = 0; t < n_thr; ++t)
      th.emplace_back([&, t] {
        std::vector<float> row(n_cols);
        for (uint64_t r = t; r < n_rows; r += n_thr) {
          uint64_t s = hash_name(name, seed) ^ (r * 0xD1B54A32D192ED03ull);
          for (uint64_t i = 0; i < n_cols; ++i) row[i] = uniform(s, a);
          quantize_row_ref(type, row.data(), dst + r * rb, static_cast<int64_t>(n_cols));
        }
      });
    for (auto& x : th) x.join();
  };
}

GgufWriter::FillFn ones(uint64_t n) {
  return [n](uint8_t* dst, uint64_t) {
    for (uint64_t i = 0; i < n; ++i) {
      const float one = 1.0f;
      __builtin_memcpy(dst + i * 4, &one, 4);
    }
  };
}

}  // namespace

std::vector<std::string> model_gen_presets() { return {"tiny-llama", "tinyllama-1.1b"}; }

Result<ModelGenSpec> model_gen_preset(const std::string& name) {
  ModelGenSpec s;
  if (name == "tiny-llama") {
    s.name = "tiny-llama";
    s.n_embd = 128, s.n_layer = 4, s.n_head = 8, s.n_head_kv = 2, s.n_ff = 352, s.n_ctx_train = 8192;
    return s;
  }
  if (name == "tinyllama-1.1b") {
    s.name = "tinyllama-1.1b-random";
    s.n_embd = 2048, s.n_layer = 22, s.n_head = 32, s.n_head_kv = 4, s.n_ff = 5632, s.n_ctx_train = 2048;
    return s;
  }
  std::string all;
  for (const auto& p : model_gen_presets()) all += (all.empty() ? "" : ", ") + p;
  return invalid_argument("mkmodel: unknown preset '" + name + "' (known: " + all + ")");
}

Status model_gen_write(const ModelGenSpec& spec, const std::string& path) {
  if (spec.arch != "llama") return unsupported("mkmodel: architecture '" + spec.arch + "' is not supported (llama)");
  if (spec.n_head == 0 || spec.n_head_kv == 0 || spec.n_head % spec.n_head_kv != 0 || spec.n_embd % spec.n_head != 0)
    return invalid_argument("mkmodel: n_embd must be a multiple of n_head, and n_head of n_head_kv");
  if (!dtype_traits(spec.type).gguf_ok)
    return invalid_argument(std::string("mkmodel: ") + dtype_name(spec.type) + " is a cache-only type, not a weight type (f32, f16, bf16, q8_0, q4_0)");
  const uint32_t hd = spec.n_embd / spec.n_head;
  const uint32_t n_rot = spec.n_rot ? spec.n_rot : hd;
  const uint32_t blk = dtype_traits(spec.type).block_elems;
  if (spec.n_embd % blk || spec.n_ff % blk)
    return invalid_argument(std::string("mkmodel: n_embd and n_ff must be multiples of the ") + dtype_name(spec.type) + " block size " + std::to_string(blk));
  if (spec.vocab_path.empty()) return invalid_argument("mkmodel: a vocabulary GGUF is required (--vocab)");
  KV_ASSIGN_OR_RETURN(auto vf, GgufFile::open(spec.vocab_path));
  KV_ASSIGN_OR_RETURN(const GgufValue* toks, vf->get_array("tokenizer.ggml.tokens", GgufType::STRING));
  const uint64_t n_vocab = toks->n_elems;

  GgufWriter w;
  const std::string a = spec.arch + ".";
  w.add_string("general.architecture", spec.arch);
  w.add_string("general.name", spec.name);
  // llama.cpp's file_type ids: 0 = all f32, 1 = mostly f16, 2 = q4_0, 7 = q8_0, 32 = bf16.
  const uint32_t ftype = spec.type == DType::F32 ? 0 : spec.type == DType::F16 ? 1 : spec.type == DType::Q4_0 ? 2 : spec.type == DType::Q8_0 ? 7 : 32;
  w.add_u32("general.file_type", ftype);
  w.add_u32(a + "context_length", spec.n_ctx_train);
  w.add_u32(a + "embedding_length", spec.n_embd);
  w.add_u32(a + "block_count", spec.n_layer);
  w.add_u32(a + "feed_forward_length", spec.n_ff);
  w.add_u32(a + "attention.head_count", spec.n_head);
  w.add_u32(a + "attention.head_count_kv", spec.n_head_kv);
  w.add_u32(a + "rope.dimension_count", n_rot);
  w.add_f32(a + "rope.freq_base", spec.rope_freq_base);
  w.add_f32(a + "attention.layer_norm_rms_epsilon", spec.rms_eps);
  w.add_u32(a + "vocab_size", static_cast<uint32_t>(n_vocab));
  for (const auto& [k, v] : vf->metadata())
    if (k.rfind("tokenizer.", 0) == 0) w.add_value(k, v);

  const uint64_t s = spec.seed;
  const float a_embd = 1.0f;                                      // embedding rows ~ U(-1, 1)
  const float a_in = std::sqrt(3.0f / spec.n_embd);               // unit-variance projections
  const float a_ff = std::sqrt(3.0f / spec.n_ff);
  const float a_o = std::sqrt(3.0f / (spec.n_head * hd)) / std::sqrt(2.0f * spec.n_layer);  // residual branches
  const uint32_t n_q = spec.n_head * hd, n_kv = spec.n_head_kv * hd;
  w.add_tensor("token_embd.weight", spec.type, {spec.n_embd, n_vocab}, random_matrix("token_embd.weight", spec.type, spec.n_embd, n_vocab, a_embd, s));
  w.add_tensor("output_norm.weight", DType::F32, {spec.n_embd}, ones(spec.n_embd));
  if (!spec.tied_output)
    w.add_tensor("output.weight", spec.type, {spec.n_embd, n_vocab}, random_matrix("output.weight", spec.type, spec.n_embd, n_vocab, a_in * 4.0f, s));
  for (uint32_t il = 0; il < spec.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    auto mat = [&](const std::string& nm, uint64_t cols, uint64_t rows, float amp) {
      w.add_tensor(p + nm, spec.type, {cols, rows}, random_matrix(p + nm, spec.type, cols, rows, amp, s));
    };
    w.add_tensor(p + "attn_norm.weight", DType::F32, {spec.n_embd}, ones(spec.n_embd));
    mat("attn_q.weight", spec.n_embd, n_q, a_in);
    mat("attn_k.weight", spec.n_embd, n_kv, a_in);
    mat("attn_v.weight", spec.n_embd, n_kv, a_in);
    mat("attn_output.weight", n_q, spec.n_embd, a_o);
    w.add_tensor(p + "ffn_norm.weight", DType::F32, {spec.n_embd}, ones(spec.n_embd));
    mat("ffn_gate.weight", spec.n_embd, spec.n_ff, a_in);
    mat("ffn_up.weight", spec.n_embd, spec.n_ff, a_in);
    mat("ffn_down.weight", spec.n_ff, spec.n_embd, a_ff / std::sqrt(2.0f * spec.n_layer));
  }
  return w.write_file(path);
}

}  // namespace kvstash
