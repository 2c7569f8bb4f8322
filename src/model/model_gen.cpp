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

// Row r of random_matrix(name, ..., a, seed) before quantization.
void random_row(const std::string& name, uint64_t r, uint64_t n_cols, float a, uint64_t seed, float* row) {
  uint64_t s = hash_name(name, seed) ^ (r * 0xD1B54A32D192ED03ull);
  for (uint64_t i = 0; i < n_cols; ++i) row[i] = uniform(s, a);
}

// llama.cpp's file_type ids: 0 = all f32, 1 = mostly f16, 2 = q4_0, 7 = q8_0, 32 = bf16.
uint32_t file_type_id(DType t) {
  return t == DType::F32 ? 0 : t == DType::F16 ? 1 : t == DType::Q4_0 ? 2 : t == DType::Q8_0 ? 7 : 32;
}

Status model_gen_write_deepseek2(const ModelGenSpec& spec, const std::string& path) {
  if (!dtype_traits(spec.type).gguf_ok)
    return invalid_argument(std::string("mkmodel: ") + dtype_name(spec.type) + " is a cache-only type, not a weight type (f32, f16, bf16, q8_0, q4_0)");
  const uint32_t n_rot = spec.n_rot ? spec.n_rot : 64, nope = spec.head_dim_nope, hd_v = spec.head_dim_v, n_kv = spec.n_lora_kv;
  const uint32_t n_head = spec.n_head, n_lq = spec.n_lora_q, n_ff_sh = spec.n_ff_exp * spec.n_expert_shared;
  const bool has_moe = spec.n_layer_dense_lead < spec.n_layer;
  if (n_head == 0 || n_rot % 2 || nope == 0 || hd_v == 0 || n_kv == 0 || spec.n_layer_dense_lead > spec.n_layer)
    return invalid_argument("mkmodel: deepseek2 needs n_head > 0, an even n_rot, nope/v/kv_lora dims > 0 and dense lead <= n_layer");
  if (has_moe && (spec.n_expert == 0 || spec.n_expert_used == 0 || spec.n_expert_used > spec.n_expert || spec.n_ff_exp == 0))
    return invalid_argument("mkmodel: deepseek2 MoE layers need 0 < n_expert_used <= n_expert and n_ff_exp > 0");
  const uint32_t blk = dtype_traits(spec.type).block_elems;
  for (uint32_t d : {spec.n_embd, n_lq, n_kv, nope, n_head * hd_v, spec.n_ff, spec.n_ff_exp, n_ff_sh})
    if (d % blk)
      return invalid_argument(std::string("mkmodel: every matrix width (n_embd, q/kv LoRA ranks, nope, n_head * v, n_ff, n_ff_exp) must be a multiple of the ") +
                              dtype_name(spec.type) + " block size " + std::to_string(blk));
  if (spec.vocab_path.empty()) return invalid_argument("mkmodel: a vocabulary GGUF is required (--vocab)");
  KV_ASSIGN_OR_RETURN(auto vf, GgufFile::open(spec.vocab_path));
  KV_ASSIGN_OR_RETURN(const GgufValue* toks, vf->get_array("tokenizer.ggml.tokens", GgufType::STRING));
  const uint64_t n_vocab = toks->n_elems;

  GgufWriter w;
  const std::string a = "deepseek2.";
  w.add_string("general.architecture", "deepseek2");
  w.add_string("general.name", spec.name);
  w.add_u32("general.file_type", file_type_id(spec.type));
  w.add_u32(a + "context_length", spec.n_ctx_train);
  w.add_u32(a + "embedding_length", spec.n_embd);
  w.add_u32(a + "block_count", spec.n_layer);
  w.add_u32(a + "feed_forward_length", spec.n_ff);
  w.add_u32(a + "attention.head_count", n_head);
  w.add_u32(a + "attention.head_count_kv", spec.mla_split ? 1 : n_head);
  w.add_f32(a + "rope.freq_base", spec.rope_freq_base);
  w.add_f32(a + "attention.layer_norm_rms_epsilon", spec.rms_eps);
  w.add_u32(a + "vocab_size", static_cast<uint32_t>(n_vocab));
  w.add_u32(a + "leading_dense_block_count", spec.n_layer_dense_lead);
  if (n_lq) w.add_u32(a + "attention.q_lora_rank", n_lq);
  w.add_u32(a + "attention.kv_lora_rank", n_kv);
  if (spec.mla_split) {  // the cache view (MQA over latent rows), then the decompressed heads
    w.add_u32(a + "attention.key_length", n_kv + n_rot);
    w.add_u32(a + "attention.value_length", n_kv);
    w.add_u32(a + "attention.key_length_mla", nope + n_rot);
    w.add_u32(a + "attention.value_length_mla", hd_v);
  } else {
    w.add_u32(a + "attention.key_length", nope + n_rot);
    w.add_u32(a + "attention.value_length", hd_v);
  }
  w.add_u32(a + "rope.dimension_count", n_rot);
  if (has_moe) {
    w.add_u32(a + "expert_count", spec.n_expert);
    w.add_u32(a + "expert_used_count", spec.n_expert_used);
    w.add_u32(a + "expert_shared_count", spec.n_expert_shared);
    w.add_u32(a + "expert_feed_forward_length", spec.n_ff_exp);
    w.add_f32(a + "expert_weights_scale", spec.expert_weights_scale);
    w.add_bool(a + "expert_weights_norm", spec.expert_weights_norm);
    w.add_u32(a + "expert_gating_func", spec.expert_gating);
    if (spec.n_expert_groups > 1) {
      w.add_u32(a + "expert_group_count", spec.n_expert_groups);
      w.add_u32(a + "expert_group_used_count", spec.n_expert_groups_used);
    }
  }
  if (spec.rope_yarn) {
    w.add_string(a + "rope.scaling.type", "yarn");
    w.add_f32(a + "rope.scaling.factor", spec.rope_scaling_factor);
    w.add_u32(a + "rope.scaling.original_context_length", spec.rope_n_ctx_orig);
    w.add_f32(a + "rope.scaling.yarn_log_multiplier", spec.yarn_log_mul);
  }
  for (const auto& [k, v] : vf->metadata())
    if (k.rfind("tokenizer.", 0) == 0) w.add_value(k, v);

  // Amplitudes keep every projection near unit variance (U(-a, a) has variance a^2 / 3) and the
  // residual branches small, so random models produce finite, non-degenerate logits.
  const uint64_t s = spec.seed;
  const DType t = spec.type;
  const float res = 1.0f / std::sqrt(2.0f * spec.n_layer);
  auto amp = [](uint64_t fan_in) { return std::sqrt(3.0f / static_cast<float>(fan_in)); };
  auto mat = [&](const std::string& nm, std::vector<uint64_t> dims, float a_) {
    uint64_t rows = 1;
    for (size_t d = 1; d < dims.size(); ++d) rows *= dims[d];
    w.add_tensor(nm, t, dims, random_matrix(nm, t, dims[0], rows, a_, s));
  };
  auto vec_ones = [&](const std::string& nm, uint64_t n) { w.add_tensor(nm, DType::F32, {n}, ones(n)); };
  w.add_tensor("token_embd.weight", t, {spec.n_embd, n_vocab}, random_matrix("token_embd.weight", t, spec.n_embd, n_vocab, 1.0f, s));
  vec_ones("output_norm.weight", spec.n_embd);
  if (!spec.tied_output) mat("output.weight", {spec.n_embd, n_vocab}, amp(spec.n_embd) * 4.0f);
  for (uint32_t il = 0; il < spec.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    vec_ones(p + "attn_norm.weight", spec.n_embd);
    if (n_lq) {
      mat(p + "attn_q_a.weight", {spec.n_embd, n_lq}, amp(spec.n_embd));
      vec_ones(p + "attn_q_a_norm.weight", n_lq);
      mat(p + "attn_q_b.weight", {n_lq, uint64_t(n_head) * (nope + n_rot)}, amp(n_lq));
    } else {
      mat(p + "attn_q.weight", {spec.n_embd, uint64_t(n_head) * (nope + n_rot)}, amp(spec.n_embd));
    }
    mat(p + "attn_kv_a_mqa.weight", {spec.n_embd, uint64_t(n_kv) + n_rot}, amp(spec.n_embd));
    vec_ones(p + "attn_kv_a_norm.weight", n_kv);
    const std::string kvb = p + "attn_kv_b.weight";
    const float a_kvb = amp(n_kv);
    if (!spec.mla_split) {
      mat(kvb, {n_kv, uint64_t(n_head) * (nope + hd_v)}, a_kvb);
    } else {
      // The values attn_kv_b would hold, split per head: k_b = the key rows transposed
      // ([n_head, n_kv, nope]), v_b = the value rows ([n_head, hd_v, n_kv]).
      w.add_tensor(p + "attn_k_b.weight", t, {nope, n_kv, n_head}, [=](uint8_t* dst, uint64_t) {
        const size_t rb = dtype_row_bytes(t, nope);
        std::vector<float> in(n_kv), tr(size_t(n_kv) * nope);
        for (uint32_t h = 0; h < n_head; ++h) {
          for (uint32_t r = 0; r < nope; ++r) {
            random_row(kvb, uint64_t(h) * (nope + hd_v) + r, n_kv, a_kvb, s, in.data());
            for (uint32_t c = 0; c < n_kv; ++c) tr[size_t(c) * nope + r] = in[c];
          }
          for (uint32_t c = 0; c < n_kv; ++c) quantize_row_ref(t, tr.data() + size_t(c) * nope, dst + (size_t(h) * n_kv + c) * rb, nope);
        }
      });
      w.add_tensor(p + "attn_v_b.weight", t, {n_kv, hd_v, n_head}, [=](uint8_t* dst, uint64_t) {
        const size_t rb = dtype_row_bytes(t, n_kv);
        std::vector<float> in(n_kv);
        for (uint32_t h = 0; h < n_head; ++h)
          for (uint32_t d = 0; d < hd_v; ++d) {
            random_row(kvb, uint64_t(h) * (nope + hd_v) + nope + d, n_kv, a_kvb, s, in.data());
            quantize_row_ref(t, in.data(), dst + (size_t(h) * hd_v + d) * rb, n_kv);
          }
      });
    }
    mat(p + "attn_output.weight", {uint64_t(n_head) * hd_v, spec.n_embd}, amp(uint64_t(n_head) * hd_v) * res);
    vec_ones(p + "ffn_norm.weight", spec.n_embd);
    if (il < spec.n_layer_dense_lead) {
      mat(p + "ffn_gate.weight", {spec.n_embd, spec.n_ff}, amp(spec.n_embd));
      mat(p + "ffn_up.weight", {spec.n_embd, spec.n_ff}, amp(spec.n_embd));
      mat(p + "ffn_down.weight", {spec.n_ff, spec.n_embd}, amp(spec.n_ff) * res);
      continue;
    }
    // The router is f32 in every file (llama.cpp keeps ffn_gate_inp unquantized).
    const std::string gi = p + "ffn_gate_inp.weight";
    w.add_tensor(gi, DType::F32, {spec.n_embd, spec.n_expert}, random_matrix(gi, DType::F32, spec.n_embd, spec.n_expert, amp(spec.n_embd) * 2.0f, s));
    if (spec.exp_probs_bias) {
      const std::string eb = p + "exp_probs_b.bias";
      w.add_tensor(eb, DType::F32, {spec.n_expert}, random_matrix(eb, DType::F32, spec.n_expert, 1, 0.05f, s));
    }
    mat(p + "ffn_gate_exps.weight", {spec.n_embd, spec.n_ff_exp, spec.n_expert}, amp(spec.n_embd));
    mat(p + "ffn_up_exps.weight", {spec.n_embd, spec.n_ff_exp, spec.n_expert}, amp(spec.n_embd));
    mat(p + "ffn_down_exps.weight", {spec.n_ff_exp, spec.n_embd, spec.n_expert}, amp(spec.n_ff_exp) * res);
    if (spec.n_expert_shared) {
      mat(p + "ffn_gate_shexp.weight", {spec.n_embd, n_ff_sh}, amp(spec.n_embd));
      mat(p + "ffn_up_shexp.weight", {spec.n_embd, n_ff_sh}, amp(spec.n_embd));
      mat(p + "ffn_down_shexp.weight", {n_ff_sh, spec.n_embd}, amp(n_ff_sh) * res);
    }
  }
  return w.write_file(path);
}

}  // namespace

std::vector<std::string> model_gen_presets() { return {"tiny-llama", "tinyllama-1.1b", "tiny-deepseek2", "deepseek2-1.7b"}; }

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
  // DeepSeek-V2-Lite's attention (16 heads, kv_lora_rank 512, rope 64, nope 128, v 128) and its
  // YaRN settings (factor 40 over 4096 positions, mscale_all_dim 0.707); small everything else.
  auto ds2_lite_attention = [](ModelGenSpec& d) {
    d.arch = "deepseek2";
    d.n_head = d.n_head_kv = 16;
    d.n_rot = 64, d.head_dim_nope = 128, d.head_dim_v = 128, d.n_lora_kv = 512;
    d.n_ctx_train = 163840, d.rms_eps = 1e-6f;
    d.rope_yarn = true, d.rope_scaling_factor = 40.0f, d.rope_n_ctx_orig = 4096, d.yarn_log_mul = 0.0707f;
  };
  if (name == "tiny-deepseek2") {
    ds2_lite_attention(s);
    s.name = "tiny-deepseek2";
    s.n_embd = 256, s.n_layer = 3, s.n_ff = 512, s.n_lora_q = 128;
    s.n_layer_dense_lead = 1, s.n_expert = 8, s.n_expert_used = 2, s.n_expert_shared = 2, s.n_ff_exp = 128;
    return s;
  }
  if (name == "deepseek2-1.7b") {  // the benchmark shape: about 1.70e9 parameters
    ds2_lite_attention(s);
    s.name = "deepseek2-1.7b-random";
    s.n_embd = 2048, s.n_layer = 8, s.n_ff = 10944, s.n_lora_q = 1536;
    s.n_layer_dense_lead = 1, s.n_expert = 16, s.n_expert_used = 4, s.n_expert_shared = 2, s.n_ff_exp = 1408;
    return s;
  }
  std::string all;
  for (const auto& p : model_gen_presets()) all += (all.empty() ? "" : ", ") + p;
  return invalid_argument("mkmodel: unknown preset '" + name + "' (known: " + all + ")");
}

Status model_gen_write(const ModelGenSpec& spec, const std::string& path) {
  if (spec.arch == "deepseek2") return model_gen_write_deepseek2(spec, path);
  if (spec.arch != "llama") return unsupported("mkmodel: architecture '" + spec.arch + "' is not supported (llama, deepseek2)");
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
  w.add_u32("general.file_type", file_type_id(spec.type));
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
