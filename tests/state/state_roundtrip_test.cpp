// Exact round trip (issue acceptance): for every K type x V type, prompt lengths 1, 31, 512,
// n_ubatch + 1 and 4100: prefill, save the sequence, restore it into another sequence, into
// another context and into a fragmented context, then check that the next-position logits and a
// 32-token greedy continuation equal the uninterrupted run's, bit for bit. The same kernels run on
// both sides, so no tolerance is needed. kvstash's llama attention has a single path (no separate
// flash-attention kernel); the matrix covers it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "engine/context.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "state/state.h"
#include "test_paths.h"

namespace kvstash {
namespace {

constexpr int kGen = 32;
constexpr int32_t kUbatch = 512;

struct Trace {
  std::vector<int32_t> tokens;         // greedy tokens
  std::vector<std::vector<float>> logits;  // logits before each greedy token
};

int32_t argmax(const float* x, uint32_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

// Greedy continuation of sequence `seq` whose last position is pos-1, starting from `first`.
Trace continue_greedy(Context& ctx, SeqId seq, int32_t pos, const float* first) {
  const uint32_t nv = ctx.model().hparams().n_vocab;
  Trace t;
  const float* lg = first;
  for (int i = 0; i < kGen; ++i) {
    t.logits.emplace_back(lg, lg + nv);
    const int32_t tok = argmax(lg, nv);
    t.tokens.push_back(tok);
    auto r = ctx.eval(seq, &tok, 1, pos++);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    if (!r.is_ok()) break;
    lg = r.value();
  }
  return t;
}

std::vector<int32_t> make_prompt(const Model& m, int n) {
  std::vector<int32_t> p(n);
  const int32_t nv = static_cast<int32_t>(m.hparams().n_vocab);
  for (int i = 0; i < n; ++i) p[i] = 3 + (i * 7919 + i / 3) % (nv - 3);
  return p;
}

std::unique_ptr<Context> make_ctx(const Model& m, DType tk, DType tv, uint32_t n_ctx) {
  ContextParams cp;
  cp.n_ctx = n_ctx;
  cp.n_ubatch = kUbatch;
  cp.n_threads = 2;
  cp.type_k = tk;
  cp.type_v = tv;
  auto c = Context::create(m, cp);
  EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  return std::move(c).value();
}

void expect_same(const Trace& a, const Trace& b, const std::string& what) {
  ASSERT_EQ(a.tokens, b.tokens) << what;
  for (size_t i = 0; i < a.logits.size(); ++i)
    ASSERT_EQ(std::memcmp(a.logits[i].data(), b.logits[i].data(), a.logits[i].size() * sizeof(float)), 0) << what << " step " << i;
}

void round_trip(const Model& m, DType tk, DType tv, int n_prompt) {
  const std::string what = std::string("K ") + dtype_name(tk) + " V " + dtype_name(tv) + " n " + std::to_string(n_prompt);
  const uint32_t n_ctx = static_cast<uint32_t>(2 * (n_prompt + kGen) + 64);  // room for two copies in one context
  const std::vector<int32_t> prompt = make_prompt(m, n_prompt);
  const uint32_t nv = m.hparams().n_vocab;

  // Uninterrupted run.
  auto a = make_ctx(m, tk, tv, n_ctx);
  auto lg = a->eval(0, prompt.data(), n_prompt, 0);
  ASSERT_TRUE(lg.is_ok()) << what << ": " << lg.status().to_string();
  std::vector<float> last(lg.value(), lg.value() + nv);
  std::vector<uint8_t> file;
  BufferSink sink(&file);
  StateSaveOptions so;
  so.logits = last.data();
  so.n_logits = nv;
  auto saved = state_write_seq(a->cache(), 0, m.fingerprint(), so, sink);
  ASSERT_TRUE(saved.is_ok()) << saved.status().to_string();
  ASSERT_EQ(saved->n_tokens, uint32_t(n_prompt));
  ASSERT_EQ(file.size(), saved->n_bytes);
  const Trace ref = continue_greedy(*a, 0, n_prompt, last.data());

  auto restore_and_check = [&](Context& ctx, SeqId seq, const std::string& where) {
    MemSource src(file.data(), file.size());
    auto r = state_read_seq(ctx.cache(), seq, m.fingerprint(), src, StateLoadOptions{});
    ASSERT_TRUE(r.is_ok()) << what << " " << where << ": " << r.status().to_string();
    ASSERT_EQ(r->n_tokens, uint32_t(n_prompt));
    ASSERT_EQ(r->tokens, prompt);
    ASSERT_EQ(r->logits.size(), nv);
    ASSERT_EQ(std::memcmp(r->logits.data(), last.data(), nv * sizeof(float)), 0);
    const Trace got = continue_greedy(ctx, seq, n_prompt, r->logits.data());
    expect_same(ref, got, what + " " + where);
  };
  // 1. Another sequence of the same context (which still holds sequence 0).
  restore_and_check(*a, 1, "into another sequence");
  // 2. Another context.
  auto b = make_ctx(m, tk, tv, n_ctx);
  restore_and_check(*b, 0, "into another context");
  // 3. A fragmented context: sequences 0..7 of 8 tokens each (cells interleaved), then every
  // other one removed, so the free cells are scattered holes plus the tail.
  auto c = make_ctx(m, tk, tv, n_ctx + 64);
  Batch bt;
  for (int i = 0; i < 8; ++i)
    for (SeqId s = 0; s < 8; ++s) bt.add(5 + s + i, i, s, false);
  ASSERT_TRUE(c->decode(bt).is_ok());
  for (SeqId s = 0; s < 8; s += 2) c->cache().seq_rm(s, -1, -1);
  restore_and_check(*c, 9, "into a fragmented context");
}



class SynthModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("kvstash_rt_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    ModelGenSpec s;
    s.name = "rt-gqa";
    s.n_embd = 128;
    s.n_layer = 2;
    s.n_head = 4;   // head_dim 32: every cache type's block fits
    s.n_head_kv = 2;
    s.n_ff = 256;
    s.n_ctx_train = 8192;
    s.type = DType::Q8_0;
    s.vocab_path = test::model_path("stories260K.gguf");  // 512-token SPM vocabulary
    ASSERT_TRUE(model_gen_write(s, (dir_ / "m.gguf").string()).is_ok());
    auto m = Model::load((dir_ / "m.gguf").string());
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    model_ = std::move(m).value().release();
  }
  static void TearDownTestSuite() {
    delete model_;
    std::filesystem::remove_all(dir_);
  }
  static inline Model* model_ = nullptr;
  static inline std::filesystem::path dir_;
};

const DType kAllTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV};

TEST_F(SynthModel, EveryKTypeTimesVTypeShortPrompts) {
  for (DType k : kAllTypes)
    for (DType v : kAllTypes)
      for (int n : {1, 31}) round_trip(*model_, k, v, n);
}

TEST_F(SynthModel, EveryKTypeTimesVTypeUbatchBoundaryPrompts) {
  for (DType k : kAllTypes)
    for (DType v : kAllTypes)
      for (int n : {kUbatch, kUbatch + 1}) round_trip(*model_, k, v, n);
}

TEST_F(SynthModel, EveryKTypeTimesVTypeLongPrompt4100) {
  for (DType k : kAllTypes)
    for (DType v : kAllTypes) round_trip(*model_, k, v, 4100);
}

TEST(StoriesRoundTrip, EveryCacheTypeTheHeadDimAllows) {
  auto m = Model::load(test::model_path("stories260K.gguf"));
  ASSERT_TRUE(m.is_ok());
  // head_dim 8: block types (q8_0, q4_0) cannot hold it; the layout refuses them (tested in kv/).
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_KV};
  for (DType k : types)
    for (DType v : types)
      for (int n : {1, 31, kUbatch + 1}) round_trip(**m, k, v, n);
  round_trip(**m, DType::F16, DType::F16, 4100);
}

}  // namespace
}  // namespace kvstash
