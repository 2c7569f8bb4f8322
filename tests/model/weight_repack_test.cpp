// Load-time repacking of Q8_0 / Q4_0 matrices into Interleaved8 (issue 7): which matrices are
// repacked, that the fingerprint still hashes the file's bytes, and that a repacked model's
// logits stay batch invariant (a prompt in one batch == the same tokens one by one, bit for bit).
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>
#include <filesystem>

#include "engine/context.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "test_paths.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<Model> make_model(const fs::path& dir, DType t, bool tied) {
  ModelGenSpec s;
  s.name = "repack";
  s.n_embd = 64;
  s.n_layer = 2;
  s.n_head = 2;  // head_dim 32
  s.n_head_kv = 1;
  s.n_ff = 96;
  s.type = t;
  s.tied_output = tied;
  s.vocab_path = test::model_path("stories260K.gguf");
  const std::string path = (dir / (std::string(dtype_name(t)) + (tied ? "_tied" : "") + ".gguf")).string();
  EXPECT_TRUE(model_gen_write(s, path).is_ok());
  auto m = Model::load(path);
  EXPECT_TRUE(m.is_ok()) << m.status().to_string();
  return std::move(m).value();
}

class ModelRepack : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvstash_repack_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(ModelRepack, QuantMatricesAreInterleavedEmbeddingsStayRowMajor) {
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    for (bool tied : {false, true}) {
      auto m = make_model(dir_, t, tied);
      for (const LlamaLayer& L : m->layers())
        for (const MatRef* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
          EXPECT_EQ(w->layout, WeightLayout::Interleaved8) << dtype_name(t);
      EXPECT_EQ(m->tok_embd().layout, WeightLayout::RowMajor);
      EXPECT_EQ(m->tok_embd().data, m->gguf().find_tensor("token_embd.weight")->data);
      if (tied) {
        EXPECT_EQ(m->output().layout, WeightLayout::RowMajor);
        EXPECT_EQ(m->output().data, m->tok_embd().data);
      } else {
        EXPECT_EQ(m->output().layout, WeightLayout::Interleaved8);
      }
    }
  }
  // Float weights are never repacked.
  auto f = make_model(dir_, DType::F16, false);
  EXPECT_EQ(f->layers()[0].wq.layout, WeightLayout::RowMajor);
  EXPECT_EQ(f->layers()[0].wq.data, f->gguf().find_tensor("blk.0.attn_q.weight")->data);
}

// The weights hash is of the GGUF tensor bytes, computed here independently from a second mapping
// of the same file: repacking (and releasing the mapped pages) changes nothing in it.
TEST_F(ModelRepack, FingerprintHashesTheFileBytes) {
  auto m = make_model(dir_, DType::Q8_0, false);
  auto f = GgufFile::open((dir_ / "q8_0.gguf").string());
  ASSERT_TRUE(f.is_ok());
  std::vector<uint64_t> per;
  for (const auto& t : f.value()->tensors()) per.push_back(XXH3_64bits(t.data, t.n_bytes));
  EXPECT_EQ(m->fingerprint().weights_hash, XXH3_64bits(per.data(), per.size() * sizeof(uint64_t)));
}

TEST_F(ModelRepack, LogitsAreBatchInvariant) {
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    auto m = make_model(dir_, t, false);
    const uint32_t nv = m->hparams().n_vocab;
    std::vector<int32_t> prompt(12);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = 3 + int32_t(i * 37) % int32_t(nv - 3);
    std::vector<float> batched, single;
    for (int mode = 0; mode < 2; ++mode) {
      ContextParams cp;
      cp.n_ctx = 64;
      cp.n_threads = mode == 0 ? 2 : 1;
      auto c = Context::create(*m, cp);
      ASSERT_TRUE(c.is_ok()) << c.status().to_string();
      const float* lg = nullptr;
      if (mode == 0) {
        auto r = c.value()->eval(0, prompt.data(), int32_t(prompt.size()), 0);
        ASSERT_TRUE(r.is_ok());
        lg = r.value();
      } else {
        for (size_t i = 0; i < prompt.size(); ++i) {
          auto r = c.value()->eval(0, &prompt[i], 1, int32_t(i));
          ASSERT_TRUE(r.is_ok());
          lg = r.value();
        }
      }
      (mode == 0 ? batched : single).assign(lg, lg + nv);
    }
    EXPECT_EQ(std::memcmp(batched.data(), single.data(), nv * sizeof(float)), 0) << dtype_name(t);
  }
}

}  // namespace
}  // namespace kvstash
