// deepseek2 (issue 4): loading and validation, the latent cache layout, the naive and absorbed
// MLA paths against each other and against a float64 reference of a whole MLA + MoE layer
// (deepseek2_reference.h), batch invariance, K-shift of latent rows, no allocation while decoding.
//
// Tolerances (measured on this build, AVX2 kernels; see the [ info ] lines each test prints):
//  - naive vs absorbed, f16 weights, teacher-forced 24 steps: f32 cache 1e-5, f16 cache 4.4e-4
//    (bound 2e-3, identical greedy tokens); q8_0 cache 0.1 (bound 0.5: absorbed quantizes the
//    query to q8_0, naive dequantizes the rows).
//  - float64 reference vs either path, f32 weights and cache, one MLA + MoE layer with YaRN and
//    logits up to ~15: 7.3e-5 (softmax routing) and 6.3e-6 (sigmoid, bias, groups); bound 5e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "alloc_counter.h"
#include "engine/context.h"
#include "gguf/gguf_writer.h"
#include "model/deepseek2_reference.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "test_paths.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;

int32_t argmax(const float* x, uint32_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

std::unique_ptr<Model> load_or_die(const std::string& path) {
  auto m = Model::load(path);
  if (!m.is_ok()) throw std::runtime_error(m.status().to_string());
  return std::move(m).value();
}

std::unique_ptr<Context> make_ctx(const Model& m, DType t, MlaPath path, uint32_t n_ctx = 512, int32_t ubatch = 512, int threads = 2) {
  ContextParams cp;
  cp.n_ctx = n_ctx;
  cp.n_ubatch = ubatch;
  cp.n_batch = std::max(ubatch, 512);
  cp.n_threads = threads;
  cp.type_k = cp.type_v = t;
  cp.mla_path = path;
  auto c = Context::create(m, cp);
  if (!c.is_ok()) throw std::runtime_error(c.status().to_string());
  return std::move(c).value();
}

// Copies a GGUF, leaving out one tensor and/or giving one key another u32 value (or dropping it).
void rewrite_gguf(const std::string& src, const std::string& dst, const std::string& drop_tensor, const std::string& key = "",
                  int64_t key_value = -1) {
  auto f = GgufFile::open(src);
  ASSERT_TRUE(f.is_ok());
  GgufWriter w;
  for (const auto& [k, v] : (*f)->metadata()) {
    if (k == key) {
      if (key_value >= 0) w.add_u32(k, static_cast<uint32_t>(key_value));
      continue;
    }
    w.add_value(k, v);
  }
  for (const auto& t : (*f)->tensors()) {
    if (t.name == drop_tensor) continue;
    std::vector<uint64_t> dims(t.ne, t.ne + t.n_dims);
    const uint8_t* data = t.data;
    w.add_tensor(t.name, t.type, dims, [data](uint8_t* out, uint64_t n) { std::memcpy(out, data, n); });
  }
  ASSERT_TRUE(w.write_file(dst).is_ok());
}

class Deepseek2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("kvstash_ds2_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    // The tiny preset (DeepSeek-V2-Lite attention, q LoRA, 1 dense + 2 MoE layers, YaRN) with the
    // deepseek-llm vocabulary, f16 weights: the two MLA paths then differ only by association.
    ModelGenSpec s = model_gen_preset("tiny-deepseek2").value();
    s.type = DType::F16;
    s.vocab_path = test::model_path("ggml-vocab-deepseek-llm.gguf");
    ASSERT_TRUE(model_gen_write(s, (dir_ / "tiny.gguf").string()).is_ok());
    s.mla_split = true;
    ASSERT_TRUE(model_gen_write(s, (dir_ / "tiny_split.gguf").string()).is_ok());
    tiny_ = load_or_die((dir_ / "tiny.gguf").string()).release();
  }
  static void TearDownTestSuite() {
    delete tiny_;
    fs::remove_all(dir_);
  }
  // A one-layer MoE model for the float64 reference: small vocabulary, f32 weights.
  static std::string write_ref_model(const std::string& name, bool variant_b) {
    ModelGenSpec s = model_gen_preset("tiny-deepseek2").value();
    s.type = DType::F32;
    s.vocab_path = test::model_path("stories260K.gguf");
    s.n_embd = 128, s.n_layer = 1, s.n_layer_dense_lead = 0;
    s.n_expert = 8, s.n_expert_used = 3, s.n_expert_shared = 1, s.n_ff_exp = 96;
    s.seed = variant_b ? 11 : 5;
    if (variant_b) {  // DeepSeek-V3-style routing; q LoRA; split decompression tensors
      s.n_lora_q = 96;
      s.expert_gating = 2, s.exp_probs_bias = true, s.expert_weights_norm = true, s.expert_weights_scale = 2.5f;
      s.n_expert_groups = 4, s.n_expert_groups_used = 2;
      s.mla_split = true;
    } else {  // DeepSeek-V2-Lite-style: no q LoRA, softmax, no normalization
      s.n_lora_q = 0;
    }
    const std::string path = (dir_ / name).string();
    EXPECT_TRUE(model_gen_write(s, path).is_ok());
    return path;
  }
  static inline Model* tiny_ = nullptr;
  static inline fs::path dir_;
};

TEST_F(Deepseek2, LoadsHyperparametersAndLatentLayout) {
  const Hparams& hp = tiny_->hparams();
  EXPECT_EQ(tiny_->arch(), Arch::Deepseek2);
  EXPECT_EQ(hp.n_head, 16u);
  EXPECT_EQ(hp.n_lora_kv, 512u);
  EXPECT_EQ(hp.n_rot, 64u);
  EXPECT_EQ(hp.head_dim, 192u);
  EXPECT_EQ(hp.head_dim_v, 128u);
  EXPECT_EQ(hp.n_lora_q, 128u);
  EXPECT_EQ(hp.n_vocab, 102400u);
  EXPECT_EQ(hp.n_layer_dense_lead, 1u);
  EXPECT_EQ(hp.rope_scaling, RopeScaling::Yarn);
  EXPECT_FLOAT_EQ(hp.rope_freq_scale, 1.0f / 40.0f);
  EXPECT_FALSE(tiny_->ds2_layers()[0].moe);
  EXPECT_TRUE(tiny_->ds2_layers()[1].moe);
  // k_b derived from attn_kv_b: f16 stays f16, 16 heads x 512 x 128 per layer.
  EXPECT_EQ(tiny_->derived_weight_bytes(), 3u * 16 * 512 * 128 * 2);
  // One latent stream per layer: 64 rope + 512 latent elements, row bytes by the types' formulas.
  const struct {
    DType t;
    size_t row_bytes, latent_offset;
  } cases[] = {{DType::F32, 576 * 4, 64 * 4}, {DType::F16, 576 * 2, 64 * 2},       {DType::BF16, 576 * 2, 64 * 2},
               {DType::Q8_0, 18 * 34, 2 * 34}, {DType::Q4_0, 18 * 18, 2 * 18}, {DType::Q8_KV, 4 + 576, 0}};
  for (const auto& c : cases) {
    auto l = tiny_->kv_layout(100, c.t, DType::F16);  // type_v is unused by MLA
    ASSERT_TRUE(l.is_ok()) << l.status().to_string();
    ASSERT_EQ(l->n_layers(), 3u);
    for (uint32_t il = 0; il < 3; ++il) {
      ASSERT_EQ(l->layer(il).streams.size(), 1u);
      const KvRowSpec& s = l->layer(il).streams[0];
      EXPECT_EQ(s.stream, KvStream::MlaLatent);
      EXPECT_EQ(s.elems_per_row, 576u);
      EXPECT_EQ(s.n_groups, 1u);
      EXPECT_EQ(s.rope_elems, 64u);
      EXPECT_EQ(s.row_bytes, c.row_bytes) << dtype_name(c.t);
      EXPECT_EQ(s.latent_offset_bytes, c.latent_offset) << dtype_name(c.t);
    }
    EXPECT_EQ(l->cell_bytes(), 3 * c.row_bytes);
    EXPECT_NE(l->describe().find("rope 64 + latent 512"), std::string::npos) << l->describe();
  }
}

TEST_F(Deepseek2, LayoutRefusesBlockTypesThatDoNotDivideTheRow) {
  ModelGenSpec s = model_gen_preset("tiny-deepseek2").value();
  s.vocab_path = test::model_path("stories260K.gguf");
  s.n_embd = 64, s.n_layer = 1, s.n_head = 2, s.n_lora_kv = 40, s.n_rot = 8, s.head_dim_nope = 8, s.head_dim_v = 8;
  s.n_layer_dense_lead = 1, s.n_ff = 64, s.n_lora_q = 0;
  const std::string path = (dir_ / "odd.gguf").string();
  ASSERT_TRUE(model_gen_write(s, path).is_ok());
  auto m = load_or_die(path);
  auto bad = m->kv_layout(16, DType::Q8_0, DType::Q8_0);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("48"), std::string::npos) << bad.status().message();
  EXPECT_TRUE(m->kv_layout(16, DType::Q8_KV, DType::F16).is_ok());
  EXPECT_TRUE(m->kv_layout(16, DType::BF16, DType::F16).is_ok());
}

TEST_F(Deepseek2, LoadErrorsNameTheTensorOrKey) {
  const std::string src = write_ref_model("err_src.gguf", false);
  const std::string dst = (dir_ / "err.gguf").string();
  auto expect_err = [&](const std::string& what, const std::string& needle) {
    auto m = Model::load(dst);
    ASSERT_FALSE(m.is_ok()) << what;
    EXPECT_NE(m.status().message().find(needle), std::string::npos) << what << ": " << m.status().to_string();
  };
  rewrite_gguf(src, dst, "blk.0.attn_kv_a_norm.weight");
  expect_err("missing latent norm", "blk.0.attn_kv_a_norm.weight");
  rewrite_gguf(src, dst, "blk.0.ffn_gate_exps.weight");
  expect_err("missing experts", "blk.0.ffn_gate_exps.weight");
  rewrite_gguf(src, dst, "blk.0.attn_kv_b.weight");
  expect_err("no decompression tensor", "blk.0.attn_kv_b.weight");
  rewrite_gguf(src, dst, "", "deepseek2.attention.kv_lora_rank", 256);
  expect_err("kv_lora_rank disagrees with the tensors", "expected");
  rewrite_gguf(src, dst, "", "deepseek2.attention.kv_lora_rank");
  expect_err("kv_lora_rank missing", "deepseek2.attention.kv_lora_rank");
  rewrite_gguf(src, dst, "", "deepseek2.expert_gating_func", 7);
  expect_err("unknown gating", "deepseek2.expert_gating_func");
  rewrite_gguf(src, dst, "", "deepseek2.expert_used_count", 9);
  expect_err("more experts used than exist", "deepseek2.expert_used_count");
}

// Greedy decoding on both MLA paths: the same tokens, logits within tolerance.
TEST_F(Deepseek2, NaiveAndAbsorbedPathsAgree) {
  const std::vector<int32_t> prompt = tiny_->vocab().tokenize("The quick brown fox jumps over the lazy dog, and then", true);
  ASSERT_GT(prompt.size(), 8u);
  const uint32_t nv = tiny_->hparams().n_vocab;
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    std::vector<int32_t> toks[2];
    std::vector<std::vector<float>> lg[2];
    for (int p = 0; p < 2; ++p) {
      auto ctx = make_ctx(*tiny_, t, p == 0 ? MlaPath::Absorbed : MlaPath::Naive);
      auto r = ctx->eval(0, prompt.data(), static_cast<int32_t>(prompt.size()), 0);
      ASSERT_TRUE(r.is_ok());
      const float* l = r.value();
      int32_t pos = static_cast<int32_t>(prompt.size());
      for (int i = 0; i < 24; ++i) {
        lg[p].emplace_back(l, l + nv);
        toks[p].push_back(argmax(l, nv));
        // Both paths are fed the absorbed path's greedy tokens (teacher forcing), so that the
        // logits stay comparable even where a near-tie would make the continuations diverge.
        const int32_t tok = toks[0][i];
        auto n = ctx->eval(0, &tok, 1, pos++);
        ASSERT_TRUE(n.is_ok());
        l = n.value();
      }
    }
    double max_diff = 0;
    for (size_t i = 0; i < lg[0].size(); ++i)
      for (uint32_t j = 0; j < nv; ++j) max_diff = std::max(max_diff, double(std::fabs(lg[0][i][j] - lg[1][i][j])));
    size_t same = 0;
    while (same < toks[0].size() && toks[0][same] == toks[1][same]) ++same;
    std::printf("[ info ] cache %s: naive vs absorbed max |logit diff| over 24 steps = %.3g; greedy tokens agree for %zu of 24\n",
                dtype_name(t), max_diff, same);
    // Float caches: both paths read the same values, so the greedy tokens are the same. q8_0:
    // absorbed quantizes the 576-wide query to q8_0 for its integer dot products while naive
    // dequantizes the rows, so they differ by that rounding (and a random model's near-ties may
    // then pick another token).
    if (t != DType::Q8_0) {
      EXPECT_EQ(toks[0], toks[1]) << dtype_name(t);
    }
    EXPECT_LT(max_diff, t == DType::Q8_0 ? 0.5 : 2e-3) << dtype_name(t);
  }
}

// A file with split attn_k_b / attn_v_b (the same values) computes exactly what attn_kv_b does.
TEST_F(Deepseek2, SplitDecompressionTensorsGiveIdenticalLogits) {
  auto split = load_or_die((dir_ / "tiny_split.gguf").string());
  EXPECT_EQ(split->hparams().head_dim, 192u);
  EXPECT_EQ(split->hparams().head_dim_v, 128u);
  const std::vector<int32_t> prompt = tiny_->vocab().tokenize("Split or joined, the same numbers.", true);
  const uint32_t nv = tiny_->hparams().n_vocab;
  for (MlaPath p : {MlaPath::Absorbed, MlaPath::Naive}) {
    auto a = make_ctx(*tiny_, DType::F16, p), b = make_ctx(*split, DType::F16, p);
    auto la = a->eval(0, prompt.data(), static_cast<int32_t>(prompt.size()), 0);
    auto lb = b->eval(0, prompt.data(), static_cast<int32_t>(prompt.size()), 0);
    ASSERT_TRUE(la.is_ok() && lb.is_ok());
    EXPECT_EQ(std::memcmp(la.value(), lb.value(), nv * sizeof(float)), 0) << mla_path_name(p);
  }
}

// One full layer (MLA attention + MoE FFN) and the output head, in float64, against both paths.
TEST_F(Deepseek2, OneLayerMatchesFloat64Reference) {
  for (bool variant_b : {false, true}) {
    const std::string path = write_ref_model(variant_b ? "ref_b.gguf" : "ref_a.gguf", variant_b);
    auto m = load_or_die(path);
    auto f = GgufFile::open(path);
    ASSERT_TRUE(f.is_ok());
    test::Deepseek2Reference ref(**f);
    const uint32_t nv = m->hparams().n_vocab;
    std::vector<int32_t> toks;
    for (int i = 0; i < 12; ++i) toks.push_back(1 + (i * 37 + 11) % (static_cast<int32_t>(nv) - 1));
    const int32_t pos0 = variant_b ? 0 : 1000;  // YaRN at small and large positions
    const auto want = ref.logits(toks, pos0);
    // Routes compared only make sense when no token sits on an expert tie.
    EXPECT_GT(ref.min_route_margin(), 1e-4) << "pick another seed: a token's experts nearly tie";
    double max_ref = 0;
    for (const auto& r : want)
      for (double v : r) max_ref = std::max(max_ref, std::fabs(v));
    for (MlaPath p : {MlaPath::Absorbed, MlaPath::Naive}) {
      auto ctx = make_ctx(*m, DType::F32, p, 64);
      Batch b;
      for (size_t i = 0; i < toks.size(); ++i) b.add(toks[i], pos0 + static_cast<int32_t>(i), 0, true);
      ASSERT_TRUE(ctx->decode(b).is_ok());
      double max_diff = 0;
      for (size_t i = 0; i < toks.size(); ++i)
        for (uint32_t j = 0; j < nv; ++j) max_diff = std::max(max_diff, std::fabs(double(ctx->logits(int32_t(i))[j]) - want[i][j]));
      std::printf("[ info ] variant %c, %s: max |logit - float64 reference| = %.3g (max |logit| %.3g, route margin %.3g)\n",
                  variant_b ? 'B' : 'A', mla_path_name(p), max_diff, max_ref, ref.min_route_margin());
      EXPECT_LT(max_diff, 5e-4) << (variant_b ? "B " : "A ") << mla_path_name(p);
    }
  }
}

// Logits of every position: one batch, micro-batches of 7, token by token, 1 or 2 threads, and
// two sequences interleaved in one batch: bit-identical (both paths).
TEST_F(Deepseek2, BatchInvariance) {
  const std::vector<int32_t> prompt =
      tiny_->vocab().tokenize("Once upon a time, in a small town, there lived a little girl named Lily who loved the sea.", true);
  const int32_t n = static_cast<int32_t>(prompt.size()), nv = static_cast<int32_t>(tiny_->hparams().n_vocab);
  ASSERT_GT(n, 15);
  for (MlaPath path : {MlaPath::Absorbed, MlaPath::Naive}) {
    auto all_logits = [&](int32_t ubatch, int32_t chunk, int threads) {
      auto ctx = make_ctx(*tiny_, DType::F16, path, 256, ubatch, threads);
      std::vector<float> out;
      for (int32_t i0 = 0; i0 < n; i0 += chunk) {
        Batch b;
        for (int32_t i = i0; i < std::min(n, i0 + chunk); ++i) b.add(prompt[i], i, 0, true);
        EXPECT_TRUE(ctx->decode(b).is_ok());
        for (int32_t k = 0; k < ctx->n_outputs(); ++k) out.insert(out.end(), ctx->logits(k), ctx->logits(k) + nv);
      }
      return out;
    };
    const std::vector<float> ref = all_logits(512, n, 2);
    ASSERT_EQ(ref.size(), size_t(n) * nv);
    EXPECT_TRUE(ref == all_logits(7, n, 2)) << mla_path_name(path) << ": micro-batches of 7";
    EXPECT_TRUE(ref == all_logits(512, 1, 2)) << mla_path_name(path) << ": token by token";
    EXPECT_TRUE(ref == all_logits(512, 5, 1)) << mla_path_name(path) << ": chunks of 5, 1 thread";
    // Two sequences in one batch (their experts are batched together).
    auto ctx = make_ctx(*tiny_, DType::F16, path, 256);
    Batch b;
    for (int32_t i = 0; i < n; ++i) {
      b.add(prompt[i], i, 0, true);
      b.add(prompt[n - 1 - i], i, 1, false);
    }
    ASSERT_TRUE(ctx->decode(b).is_ok());
    std::vector<float> mixed;
    for (int32_t k = 0; k < ctx->n_outputs(); ++k) mixed.insert(mixed.end(), ctx->logits(k), ctx->logits(k) + nv);
    EXPECT_TRUE(ref == mixed) << mla_path_name(path) << ": interleaved with another sequence";
  }
}

// seq_add rotates the RoPE part of latent rows: continuing after a shift matches a run made at
// the shifted positions; block types leave the latent part's bytes untouched.
TEST_F(Deepseek2, KShiftRotatesTheRopePartOnly) {
  const std::vector<int32_t> prompt = tiny_->vocab().tokenize("Shifting positions should not change much at all here.", true);
  const int32_t n = static_cast<int32_t>(prompt.size()), nv = static_cast<int32_t>(tiny_->hparams().n_vocab), delta = 37;
  for (DType t : {DType::F32, DType::Q8_0, DType::Q8_KV}) {
    auto a = make_ctx(*tiny_, t, MlaPath::Absorbed, 256);
    ASSERT_TRUE(a->eval(0, prompt.data(), n, 0).is_ok());
    const KvRowSpec& ls = a->cache().layout().layer(1).streams[0];
    const uint32_t c0 = 3;
    std::vector<uint8_t> latent_before(a->cache().row(1, 0, c0) + ls.latent_offset_bytes, a->cache().row(1, 0, c0) + ls.row_bytes);
    ASSERT_TRUE(a->seq_add(0, 0, -1, delta).is_ok());
    if (ls.latent_offset_bytes) {
      EXPECT_EQ(std::memcmp(latent_before.data(), a->cache().row(1, 0, c0) + ls.latent_offset_bytes, latent_before.size()), 0) << dtype_name(t);
    }
    const int32_t next = 100;
    auto la = a->eval(0, &next, 1, n + delta);
    ASSERT_TRUE(la.is_ok());
    std::vector<float> got(la.value(), la.value() + nv);
    auto b = make_ctx(*tiny_, t, MlaPath::Absorbed, 256);
    ASSERT_TRUE(b->eval(0, prompt.data(), n, delta).is_ok());
    auto lb = b->eval(0, &next, 1, n + delta);
    ASSERT_TRUE(lb.is_ok());
    double max_diff = 0, max_quant = 0;
    for (int32_t j = 0; j < nv; ++j) max_diff = std::max(max_diff, double(std::fabs(got[j] - lb.value()[j])));
    // The scale of this cache type's own rounding: the same shifted-position run with an f32 cache.
    auto f = make_ctx(*tiny_, DType::F32, MlaPath::Absorbed, 256);
    ASSERT_TRUE(f->eval(0, prompt.data(), n, delta).is_ok());
    auto lf = f->eval(0, &next, 1, n + delta);
    ASSERT_TRUE(lf.is_ok());
    for (int32_t j = 0; j < nv; ++j) max_quant = std::max(max_quant, double(std::fabs(lf.value()[j] - lb.value()[j])));
    std::printf("[ info ] K-shift by %d, cache %s: max |logit diff| vs. prefill at shifted positions = %.3g (cache rounding alone: %.3g)\n",
                delta, dtype_name(t), max_diff, max_quant);
    // f32: rotations compose up to float rounding. Quantized rows are requantized after the
    // rotation: one more rounding of the same size as the cache's own.
    if (t == DType::F32) {
      EXPECT_LT(max_diff, 2e-3);
    } else {
      EXPECT_LT(max_diff, 2 * max_quant) << dtype_name(t);
    }
  }
}

TEST_F(Deepseek2, DecodeMakesNoHeapAllocation) {
  const std::vector<int32_t> prompt = tiny_->vocab().tokenize("Allocation-free decoding", true);
  for (MlaPath path : {MlaPath::Absorbed, MlaPath::Naive})
    for (int threads : {1, 2}) {
      auto ctx = make_ctx(*tiny_, DType::Q8_0, path, 128, 512, threads);
      auto lg = ctx->eval(0, prompt.data(), static_cast<int32_t>(prompt.size()), 0);
      ASSERT_TRUE(lg.is_ok());
      int32_t pos = static_cast<int32_t>(prompt.size());
      int32_t tok = argmax(lg.value(), tiny_->hparams().n_vocab);
      ASSERT_TRUE(ctx->eval(0, &tok, 1, pos++).is_ok());  // warm-up
      const int64_t before = test::n_allocs();
      for (int i = 0; i < 16; ++i) {
        auto r = ctx->eval(0, &tok, 1, pos++);
        ASSERT_TRUE(r.is_ok());
        tok = argmax(r.value(), tiny_->hparams().n_vocab);
      }
      EXPECT_EQ(test::n_allocs(), before) << mla_path_name(path) << ", " << threads << " threads";
    }
}

TEST(Deepseek2Presets, BenchmarkShapeIs1_7BParameters) {
  auto s = model_gen_preset("deepseek2-1.7b");
  ASSERT_TRUE(s.is_ok());
  EXPECT_EQ(s->arch, "deepseek2");
  EXPECT_EQ(s->n_embd, 2048u);
  EXPECT_EQ(s->n_layer, 8u);
  EXPECT_EQ(s->n_layer_dense_lead, 1u);
  EXPECT_EQ(s->n_ff, 10944u);
  EXPECT_EQ(s->n_expert, 16u);
  EXPECT_EQ(s->n_expert_used, 4u);
  EXPECT_EQ(s->n_expert_shared, 2u);
  EXPECT_EQ(s->n_ff_exp, 1408u);
  EXPECT_EQ(s->n_head, 16u);
  EXPECT_EQ(s->n_lora_q, 1536u);
  EXPECT_EQ(s->n_lora_kv, 512u);
  EXPECT_EQ(s->n_rot, 64u);
  EXPECT_EQ(s->head_dim_nope, 128u);
  EXPECT_EQ(s->head_dim_v, 128u);
  // Parameters from the shapes llama.cpp expects, with the 102400-token deepseek-llm vocabulary.
  const uint64_t E = 2048, V = 102400, H = 16, qk = 192, v = 128, nl = 8;
  const uint64_t attn = E * 1536 + 1536 + 1536 * H * qk + E * (512 + 64) + 512 + 512 * H * (128 + v) + H * v * E + 2 * E;
  const uint64_t dense = 3 * E * 10944, moe = 3 * E * 1408 * (16 + 2) + E * 16;
  const uint64_t total = 2 * E * V + E + nl * attn + dense + (nl - 1) * moe;
  EXPECT_NEAR(double(total) / 1e9, 1.70, 0.02);
  auto t = model_gen_preset("tiny-deepseek2");
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(t->n_head, 16u);
  EXPECT_EQ(t->n_lora_kv, 512u);
  EXPECT_GT(t->n_lora_q, 0u);
  EXPECT_GT(t->n_expert_shared, 0u);
}

}  // namespace
}  // namespace kvstash
