// stories260K against ik_llama.cpp's reference outputs (../shared/reference/stories260K-greedy.json):
// greedy token ids exactly, first-position top-5 logits within tolerance; and model-level batch
// invariance (one batch, chunked micro-batches, token by token: bit-identical logits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "engine/context.h"
#include "model/model.h"
#include "test_paths.h"

namespace kvstash {
namespace {

nlohmann::json load_reference() {
  std::ifstream f(test::reference_dir() + "/stories260K-greedy.json");
  if (!f) throw std::runtime_error("reference file missing: " + test::reference_dir() + "/stories260K-greedy.json");
  return nlohmann::json::parse(f);
}

std::unique_ptr<Model> load_stories() {
  auto m = Model::load(test::model_path("stories260K.gguf"));
  if (!m.is_ok()) throw std::runtime_error(m.status().to_string());
  return std::move(m).value();
}

int32_t argmax(const float* x, int32_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

struct GreedyRun {
  std::vector<int32_t> tokens;
  std::vector<float> first_logits;
};

GreedyRun greedy(const Model& m, const ContextParams& cp, const std::vector<int32_t>& prompt, int n_gen) {
  auto ctx = Context::create(m, cp);
  EXPECT_TRUE(ctx.is_ok()) << ctx.status().to_string();
  GreedyRun out;
  auto lg = (*ctx)->eval(0, prompt.data(), static_cast<int32_t>(prompt.size()), 0);
  EXPECT_TRUE(lg.is_ok()) << lg.status().to_string();
  const int32_t nv = static_cast<int32_t>(m.hparams().n_vocab);
  out.first_logits.assign(lg.value(), lg.value() + nv);
  const float* logits = lg.value();
  int32_t pos = static_cast<int32_t>(prompt.size());
  for (int i = 0; i < n_gen; ++i) {
    const int32_t t = argmax(logits, nv);
    out.tokens.push_back(t);
    if (i + 1 == n_gen) break;
    auto r = (*ctx)->eval(0, &t, 1, pos++);
    EXPECT_TRUE(r.is_ok());
    logits = r.value();
  }
  return out;
}

class Stories : public ::testing::TestWithParam<DType> {};

TEST_P(Stories, GreedyMatchesReferenceForEveryPrompt) {
  const nlohmann::json ref = load_reference();
  auto m = load_stories();
  ContextParams cp;
  cp.n_ctx = 2048;
  cp.n_threads = 2;
  cp.type_k = cp.type_v = GetParam();
  double max_top5_diff = 0;
  ASSERT_GE(ref["prompts"].size(), 3u);
  for (const auto& p : ref["prompts"]) {
    const std::vector<int32_t> prompt = m->vocab().tokenize(p["prompt"].get<std::string>(), true);
    ASSERT_EQ(prompt, p["prompt_token_ids"].get<std::vector<int32_t>>()) << p["prompt"];
    const auto want = p["generated_token_ids"].get<std::vector<int32_t>>();
    GreedyRun r = greedy(*m, cp, prompt, static_cast<int>(want.size()));
    EXPECT_EQ(r.tokens, want) << p["prompt"];
    for (const auto& e : p["first_position_top5_logits"]) {
      const double d = std::fabs(r.first_logits[e["id"].get<int>()] - e["logit"].get<double>());
      max_top5_diff = std::max(max_top5_diff, d);
    }
    // The reference's top-5 order holds.
    std::vector<int32_t> idx(r.first_logits.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + 5, idx.end(), [&](int a, int b) { return r.first_logits[a] > r.first_logits[b]; });
    for (int k = 0; k < 5; ++k) EXPECT_EQ(idx[k], p["first_position_top5_logits"][k]["id"].get<int>());
  }
  // Tolerances: 0.05 is the reference's own fa-on/fa-off spread with an f16 cache. With an f32
  // cache kvstash reaches 0.01 (measured ~0.004); with f16 it stays inside 0.05.
  const double tol = GetParam() == DType::F32 ? 0.01 : 0.05;
  EXPECT_LE(max_top5_diff, tol) << "max |logit - reference| over the top-5 of every prompt";
  RecordProperty("max_top5_logit_diff", std::to_string(max_top5_diff));
  std::printf("[ info ] cache %s: max top-5 logit diff vs reference = %.6f\n", dtype_name(GetParam()), max_top5_diff);
}

INSTANTIATE_TEST_SUITE_P(CacheTypes, Stories, ::testing::Values(DType::F32, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The logits of every position of `prompt` (one sequence), fed in chunks of `chunk` tokens
// decoded in micro-batches of `ubatch` on `threads` threads, with a `type` K/V cache.
std::vector<float> all_logits(const Model& m, const std::vector<int32_t>& prompt, int32_t ubatch, int32_t chunk, int threads,
                              DType type = DType::F16) {
  const int32_t n = static_cast<int32_t>(prompt.size()), nv = static_cast<int32_t>(m.hparams().n_vocab);
  ContextParams cp;
  cp.n_ctx = 256;
  cp.n_ubatch = ubatch;
  cp.n_batch = std::max(ubatch, chunk);
  cp.n_threads = threads;
  cp.type_k = type;
  cp.type_v = type;
  auto ctx = Context::create(m, cp);
  EXPECT_TRUE(ctx.is_ok());
  std::vector<float> out;
  for (int32_t i0 = 0; i0 < n; i0 += chunk) {
    Batch b;
    for (int32_t i = i0; i < std::min(n, i0 + chunk); ++i) b.add(prompt[i], i, 0, true);
    EXPECT_TRUE((*ctx)->decode(b).is_ok());
    for (int32_t k = 0; k < (*ctx)->n_outputs(); ++k) out.insert(out.end(), (*ctx)->logits(k), (*ctx)->logits(k) + nv);
  }
  return out;
}

// Prefill in one micro-batch, in micro-batches of 7, and token by token: the logits of every
// position must be bit-identical (batch invariance of the whole forward pass).
TEST(StoriesBatchInvariance, LogitsIdenticalAcrossBatchSplits) {
  auto m = load_stories();
  const std::vector<int32_t> prompt = m->vocab().tokenize("Once upon a time, in a small town, there lived a little girl named Lily.", true);
  const int32_t n = static_cast<int32_t>(prompt.size()), nv = static_cast<int32_t>(m->hparams().n_vocab);
  ASSERT_GT(n, 15);
  const std::vector<float> ref = all_logits(*m, prompt, 512, n, 2);
  ASSERT_EQ(ref.size(), size_t(n) * nv);
  for (auto [ub, chunk, thr] : {std::tuple{7, n, 1}, std::tuple{1, 1, 2}, std::tuple{4, 5, 3}, std::tuple{512, 9, 2}}) {
    const std::vector<float> got = all_logits(*m, prompt, ub, chunk, thr);
    ASSERT_EQ(got.size(), ref.size());
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0) << "ubatch " << ub << " chunk " << chunk << " threads " << thr;
  }
}

// A prompt long enough to span several 32-key attention tiles, for every cache type stories260K's
// head dim (8) admits: one micro-batch, token by token, and chunks of 7 in micro-batches of 5 on 3
// threads give bit-identical logits at every position.
TEST(StoriesBatchInvariance, LongPromptAcrossKeyTilesEveryCacheType) {
  auto m = load_stories();
  std::vector<int32_t> prompt;
  while (prompt.size() < 100) {
    const auto p = m->vocab().tokenize("Once upon a time, in a small town, there lived a little girl named Lily.", prompt.empty());
    prompt.insert(prompt.end(), p.begin(), p.end());
  }
  const int32_t n = static_cast<int32_t>(prompt.size()), nv = static_cast<int32_t>(m->hparams().n_vocab);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_KV}) {
    SCOPED_TRACE(dtype_name(t));
    const std::vector<float> ref = all_logits(*m, prompt, 512, n, 2, t);
    ASSERT_EQ(ref.size(), size_t(n) * nv);
    for (auto [ub, chunk, thr] : {std::tuple{1, 1, 1}, std::tuple{5, 7, 3}}) {
      const std::vector<float> got = all_logits(*m, prompt, ub, chunk, thr, t);
      ASSERT_EQ(got.size(), ref.size());
      EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0) << "ubatch " << ub << " chunk " << chunk << " threads " << thr;
    }
  }
}

// Two sequences in one batch give exactly the logits each gives alone.
TEST(StoriesBatchInvariance, SequencesDoNotAffectEachOther) {
  auto m = load_stories();
  const int32_t nv = static_cast<int32_t>(m->hparams().n_vocab);
  const auto a = m->vocab().tokenize("Once upon a time", true);
  const auto b = m->vocab().tokenize("What is the capital of France?", true);
  ContextParams cp;
  cp.n_ctx = 128;
  cp.n_threads = 2;
  auto alone = [&](const std::vector<int32_t>& p) {
    auto ctx = Context::create(*m, cp);
    auto lg = (*ctx)->eval(3, p.data(), static_cast<int32_t>(p.size()), 0);
    EXPECT_TRUE(lg.is_ok());
    return std::vector<float>(lg.value(), lg.value() + nv);
  };
  auto ctx = Context::create(*m, cp);
  Batch bt;
  // Interleave the two prompts in one batch.
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i < b.size()) bt.add(b[i], static_cast<int32_t>(i), 1, i + 1 == b.size());
    if (i < a.size()) bt.add(a[i], static_cast<int32_t>(i), 0, i + 1 == a.size());
  }
  ASSERT_TRUE((*ctx)->decode(bt).is_ok());
  ASSERT_EQ((*ctx)->n_outputs(), 2);
  const std::vector<float> la = alone(a), lb = alone(b);
  // Output order follows batch order: a's last token comes before b's last token here.
  EXPECT_EQ(std::memcmp((*ctx)->logits(0), la.data(), nv * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp((*ctx)->logits(1), lb.data(), nv * sizeof(float)), 0);
}

TEST(StoriesContext, RefusesInvalidBatchesWithoutSideEffects) {
  auto m = load_stories();
  ContextParams cp;
  cp.n_ctx = 8;
  cp.n_threads = 1;
  auto ctx = Context::create(*m, cp);
  ASSERT_TRUE(ctx.is_ok());
  Context& c = **ctx;
  Batch b;
  b.add(600, 0, 0, true);  // vocab has 512 tokens
  Status s = c.decode(b);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
  EXPECT_NE(s.message().find("600"), std::string::npos);
  b.clear();
  b.add(1, 0, 70, true);  // bad sequence id
  EXPECT_EQ(c.decode(b).code(), StatusCode::InvalidArgument);
  b.clear();
  b.add(1, -1, 0, true);
  EXPECT_EQ(c.decode(b).code(), StatusCode::InvalidArgument);
  b.clear();
  for (int i = 0; i < 9; ++i) b.add(1, i, 0, false);  // 9 tokens, 8 cells
  EXPECT_EQ(c.decode(b).code(), StatusCode::ResourceExhausted);
  EXPECT_EQ(c.cache().n_used(), 0u);
  b.clear();
  b.add(1, 0, 0, false);
  b.add(1, 0, 0, true);  // same position twice
  EXPECT_EQ(c.decode(b).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(c.cache().n_used(), 0u);
  b.clear();
  b.add(1, 0, 0, true);
  ASSERT_TRUE(c.decode(b).is_ok());
  EXPECT_EQ(c.decode(b).code(), StatusCode::InvalidArgument);  // position 0 already cached
  EXPECT_EQ(c.cache().n_used(), 1u);
}

}  // namespace
}  // namespace kvstash
