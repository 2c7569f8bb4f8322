// The save/restore matrix on deepseek2's latent cache (issue 4): every latent cache type, prompts
// of 1, 31, n_ubatch + 1 and 4100 tokens; restore into another sequence, another context and a
// fragmented context; bit-exact next logits and greedy continuation. File sizes are checked
// against an independent formula: header and sections + n_tokens x n_layer x latent row bytes,
// the row being kv_lora_rank + n_rot = 576 elements (not the 43x larger decompressed K/V rows of
// ik_llama.cpp #436). Plus a truncation and a byte flip of a deepseek2 file.
#include <gtest/gtest.h>
#include <unistd.h>

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

constexpr int kGen = 16;
constexpr int32_t kUbatch = 512;
constexpr uint32_t kLayers = 2, kLoraKv = 512, kRot = 64, kRow = kLoraKv + kRot;

// Bytes of one latent row of 576 elements per cache type, typed in from the formats (not from
// dtype.h): f32 4 B/elem; f16/bf16 2 B; q8_0 34 B per 32; q4_0 18 B per 32; q8_KV 4 + 1 B/elem.
size_t latent_row_bytes(DType t) {
  switch (t) {
    case DType::F32: return kRow * 4;
    case DType::F16:
    case DType::BF16: return kRow * 2;
    case DType::Q8_0: return kRow / 32 * 34;
    case DType::Q4_0: return kRow / 32 * 18;
    case DType::Q8_KV: return 4 + kRow;
  }
  return 0;
}

int32_t argmax(const float* x, uint32_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

struct Trace {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};

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

std::unique_ptr<Context> make_ctx(const Model& m, DType t, uint32_t n_ctx) {
  ContextParams cp;
  cp.n_ctx = n_ctx;
  cp.n_ubatch = kUbatch;
  cp.n_threads = 2;
  cp.type_k = cp.type_v = t;
  auto c = Context::create(m, cp);
  EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  return std::move(c).value();
}

class StateDeepseek2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("kvstash_ds2_state_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    // The latent geometry of DeepSeek-V2-Lite (512 + 64) with few heads, so that 4100-token
    // prefills stay fast: the latent row does not depend on the head count.
    ModelGenSpec s = model_gen_preset("tiny-deepseek2").value();
    s.name = "state-ds2";
    s.type = DType::Q8_0;
    s.vocab_path = test::model_path("stories260K.gguf");
    s.n_embd = 128, s.n_layer = kLayers, s.n_head = s.n_head_kv = 2, s.n_ff = 256, s.n_lora_q = 64;
    s.n_lora_kv = kLoraKv, s.n_rot = kRot, s.head_dim_nope = 64, s.head_dim_v = 64;
    s.n_layer_dense_lead = 1, s.n_expert = 4, s.n_expert_used = 2, s.n_expert_shared = 1, s.n_ff_exp = 64;
    ASSERT_TRUE(model_gen_write(s, (dir_ / "m.gguf").string()).is_ok());
    auto m = Model::load((dir_ / "m.gguf").string());
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    model_ = std::move(m).value().release();
  }
  static void TearDownTestSuite() {
    delete model_;
    std::filesystem::remove_all(dir_);
  }

  std::vector<int32_t> prompt(int n) const {
    std::vector<int32_t> p(n);
    const int32_t nv = static_cast<int32_t>(model_->hparams().n_vocab);
    for (int i = 0; i < n; ++i) p[i] = 3 + (i * 7919 + i / 3) % (nv - 3);
    return p;
  }

  // Prefills a prompt of n tokens, saves it, checks the size formula and the three restores.
  // Returns the file.
  std::vector<uint8_t> round_trip(DType t, int n) {
    const std::string what = std::string(dtype_name(t)) + " n " + std::to_string(n);
    const uint32_t n_ctx = static_cast<uint32_t>(2 * (n + kGen) + 64);
    const std::vector<int32_t> p = prompt(n);
    const uint32_t nv = model_->hparams().n_vocab;
    auto a = make_ctx(*model_, t, n_ctx);
    auto lg = a->eval(0, p.data(), n, 0);
    EXPECT_TRUE(lg.is_ok()) << what;
    std::vector<float> last(lg.value(), lg.value() + nv);
    std::vector<uint8_t> file;
    BufferSink sink(&file);
    StateSaveOptions so;
    so.created_ms = 1700000000000ull;
    so.logits = last.data();
    so.n_logits = nv;
    auto saved = state_write_seq(a->cache(), 0, model_->fingerprint(), so, sink);
    EXPECT_TRUE(saved.is_ok()) << saved.status().to_string();
    EXPECT_EQ(file.size(), saved->n_bytes);
    check_size(t, n, file.size(), what);
    const Trace ref = continue_greedy(*a, 0, n, last.data());

    auto restore_and_check = [&](Context& ctx, SeqId seq, const std::string& where) {
      MemSource src(file.data(), file.size());
      auto r = state_read_seq(ctx.cache(), seq, model_->fingerprint(), src, StateLoadOptions{});
      ASSERT_TRUE(r.is_ok()) << what << " " << where << ": " << r.status().to_string();
      ASSERT_EQ(r->tokens, p);
      ASSERT_EQ(std::memcmp(r->logits.data(), last.data(), nv * sizeof(float)), 0);
      const Trace got = continue_greedy(ctx, seq, n, r->logits.data());
      ASSERT_EQ(ref.tokens, got.tokens) << what << " " << where;
      for (size_t i = 0; i < ref.logits.size(); ++i)
        ASSERT_EQ(std::memcmp(ref.logits[i].data(), got.logits[i].data(), nv * sizeof(float)), 0) << what << " " << where << " step " << i;
    };
    restore_and_check(*a, 1, "into another sequence");
    auto b = make_ctx(*model_, t, n_ctx);
    restore_and_check(*b, 0, "into another context");
    auto c = make_ctx(*model_, t, n_ctx + 64);
    Batch bt;
    for (int i = 0; i < 8; ++i)
      for (SeqId s = 0; s < 8; ++s) bt.add(5 + s + i, i, s, false);
    EXPECT_TRUE(c->decode(bt).is_ok());
    for (SeqId s = 0; s < 8; s += 2) c->cache().seq_rm(s, -1, -1);
    restore_and_check(*c, 9, "into a fragmented context");
    return file;
  }

  // file = fixed part + n x (4 B token + n_layer x latent row bytes), where the fixed part
  // (header, sections, CEL2 counts and its one run: one sequence from position 0, logits) is
  // the same for every type and length; measured once, from the first file seen, and bounded by
  // docs/state-format.md §7 (under 1 KiB + 4 x n_vocab for this 2-layer model).
  void check_size(DType t, int n, size_t got, const std::string& what) {
    const size_t per_token = 4 + kLayers * latent_row_bytes(t);
    ASSERT_GT(got, size_t(n) * per_token) << what;
    const size_t fixed = got - size_t(n) * per_token;
    EXPECT_LT(fixed, 1024 + 4 * model_->hparams().n_vocab) << what;
    if (fixed_ == 0) fixed_ = fixed;
    // Equal fixed parts across types and lengths pin the per-token bytes to exactly the token id
    // plus n_layer latent rows, and the cells to one run.
    EXPECT_EQ(fixed, fixed_) << what << ": the size is not fixed part + n x (token + latent rows)";
  }

  static inline Model* model_ = nullptr;
  static inline std::filesystem::path dir_;
  static inline size_t fixed_ = 0;
};

const DType kLatentTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV};

TEST_F(StateDeepseek2, EveryLatentTypeShortAndUbatchBoundaryPrompts) {
  for (DType t : kLatentTypes)
    for (int n : {1, 31, kUbatch + 1}) round_trip(t, n);
}

TEST_F(StateDeepseek2, LongPrompt4100EveryLatentType) {
  for (DType t : kLatentTypes) {
    const std::vector<uint8_t> file = round_trip(t, 4100);
    // E.g. f16: 4100 tokens x (16 B cell + 2 layers x 1152 B latent rows) = 9.5 MB plus under
    // 3 KiB of header, sections and logits: nothing like 43x that.
    EXPECT_LT(file.size(), size_t(4100) * (16 + kLayers * latent_row_bytes(t)) + 1024 + 4 * model_->hparams().n_vocab) << dtype_name(t);
  }
}

TEST_F(StateDeepseek2, TruncatedOrFlippedFileIsRefusedAndChangesNothing) {
  const std::vector<uint8_t> file = round_trip(DType::Q8_0, 31);
  auto ctx = make_ctx(*model_, DType::Q8_0, 256);
  const std::vector<int32_t> other = prompt(5);
  ASSERT_TRUE(ctx->eval(2, other.data(), 5, 0).is_ok());
  auto expect_refused = [&](const std::vector<uint8_t>& bad, const std::string& what) {
    MemSource src(bad.data(), bad.size());
    auto r = state_read_seq(ctx->cache(), 2, model_->fingerprint(), src, StateLoadOptions{});
    ASSERT_FALSE(r.is_ok()) << what;
    EXPECT_EQ(ctx->cache().seq_n_cells(2), 5u) << what;  // the target sequence is as it was
    EXPECT_EQ(ctx->cache().n_used(), 5u) << what;
  };
  std::vector<uint8_t> cut(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(file.size() * 2 / 3));
  expect_refused(cut, "truncated to 2/3");
  std::vector<uint8_t> flip = file;
  flip[file.size() / 2] ^= 0x10;  // inside a KVDATA section: its checksum fails
  expect_refused(flip, "one byte flipped in the latent rows");
}

}  // namespace
}  // namespace kvstash
