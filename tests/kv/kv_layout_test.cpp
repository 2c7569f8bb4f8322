// KvLayout geometry for every cache type: Model::kv_layout on stories260K (head dim 8) and on
// synthesized GQA models (head dims 16 and 64), checked against sizes computed here from the
// hyperparameters and hand-written per-type byte formulas, not from dtype_row_bytes.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include "kv/kv_cache.h"
#include "kv/kv_layout.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "test_paths.h"

namespace kvstash {
namespace {

const DType kCacheTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV};

// Bytes of one head row of n elements, written out per type (f32 4n, f16/bf16 2n, q8_0 34n/32,
// q4_0 18n/32, q8_KV 4 + n). 0 = the type cannot store such a row.
uint64_t head_row_bytes(DType t, uint64_t n) {
  switch (t) {
    case DType::F32: return 4 * n;
    case DType::F16: return 2 * n;
    case DType::BF16: return 2 * n;
    case DType::Q8_0: return n % 32 ? 0 : 34 * n / 32;
    case DType::Q4_0: return n % 32 ? 0 : 18 * n / 32;
    case DType::Q8_KV: return 4 + n;
  }
  return 0;
}

KvScaleLayout expected_scales(DType t) {
  if (t == DType::Q8_0 || t == DType::Q4_0) return KvScaleLayout::PerBlock32;
  if (t == DType::Q8_KV) return KvScaleLayout::PerRow;
  return KvScaleLayout::None;
}

class KvLayoutModels : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("kvstash-kv-layout-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  // A random-weight llama with the given head geometry (q8_0 weights keep the file small).
  static std::unique_ptr<Model> synth(uint32_t n_embd, uint32_t n_head, uint32_t n_head_kv, uint32_t n_layer) {
    ModelGenSpec spec;
    spec.n_embd = n_embd;
    spec.n_head = n_head;
    spec.n_head_kv = n_head_kv;
    spec.n_layer = n_layer;
    spec.n_ff = 2 * n_embd;
    spec.type = DType::Q8_0;
    spec.tied_output = true;
    spec.vocab_path = test::model_path("ggml-vocab-llama-spm.gguf");
    const std::string path = (dir_ / ("m" + std::to_string(n_embd) + "-" + std::to_string(n_head) + "-" + std::to_string(n_head_kv) + ".gguf")).string();
    Status st = model_gen_write(spec, path);
    if (!st.is_ok()) throw std::runtime_error(st.to_string());
    auto m = Model::load(path);
    if (!m.is_ok()) throw std::runtime_error(m.status().to_string());
    return std::move(m).value();
  }

  // Every (K, V) type pair: sizes from the hyperparameters and head_row_bytes, or the error.
  static void check_all_types(const Model& m, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim) {
    const uint32_t n_cells = 96;
    for (DType tk : kCacheTypes) {
      for (DType tv : kCacheTypes) {
        SCOPED_TRACE(std::string("K ") + dtype_name(tk) + " V " + dtype_name(tv) + " head dim " + std::to_string(head_dim));
        const uint64_t kb = head_row_bytes(tk, head_dim), vb = head_row_bytes(tv, head_dim);
        auto l = m.kv_layout(n_cells, tk, tv);
        if (kb == 0 || vb == 0) {
          ASSERT_FALSE(l.is_ok());
          EXPECT_EQ(l.status().code(), StatusCode::InvalidArgument);
          const std::string msg = l.status().message();
          EXPECT_NE(msg.find("head dim " + std::to_string(head_dim)), std::string::npos) << msg;
          EXPECT_NE(msg.find("block size 32"), std::string::npos) << msg;
          continue;
        }
        ASSERT_TRUE(l.is_ok()) << l.status().to_string();
        const KvLayout& L = l.value();
        ASSERT_EQ(L.n_layers(), n_layer);
        EXPECT_EQ(L.n_cells(), n_cells);
        for (uint32_t il = 0; il < n_layer; ++il) {
          const KvRowSpec* k = L.find(il, KvStream::K);
          const KvRowSpec* v = L.find(il, KvStream::V);
          ASSERT_NE(k, nullptr);
          ASSERT_NE(v, nullptr);
          for (auto [s, t, hb] : {std::tuple{k, tk, kb}, std::tuple{v, tv, vb}}) {
            EXPECT_EQ(s->dtype, t);
            EXPECT_EQ(s->elems_per_row, n_head_kv * head_dim);
            EXPECT_EQ(s->n_groups, n_head_kv);
            EXPECT_EQ(s->group_elems(), head_dim);
            EXPECT_EQ(s->group_bytes, hb);
            EXPECT_EQ(s->row_bytes, n_head_kv * hb);
            EXPECT_EQ(s->scale_layout, expected_scales(t));
          }
        }
        const uint64_t cell = uint64_t(n_layer) * n_head_kv * (kb + vb);
        EXPECT_EQ(L.cell_bytes(), cell);
        EXPECT_EQ(L.total_bytes(), cell * n_cells);
      }
    }
  }

  static std::filesystem::path dir_;
};
std::filesystem::path KvLayoutModels::dir_;

TEST_F(KvLayoutModels, Stories260KHeadDim8) {
  auto m = Model::load(test::model_path("stories260K.gguf"));
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  const Hparams& hp = (*m)->hparams();
  // stories260K: 5 layers, 8 heads, 4 KV heads of 8 dims. q8_0/q4_0 cannot store 8-element heads.
  ASSERT_EQ(hp.head_dim, 8u);
  ASSERT_EQ(hp.n_head_kv, 4u);
  ASSERT_EQ(hp.n_layer, 5u);
  check_all_types(**m, hp.n_layer, hp.n_head_kv, hp.head_dim);
  // Spot check by hand: q8_KV K + f16 V = 5 layers * 4 heads * ((4 + 8) + 2 * 8) = 560 bytes a cell.
  auto l = (*m)->kv_layout(10, DType::Q8_KV, DType::F16);
  ASSERT_TRUE(l.is_ok());
  EXPECT_EQ(l->cell_bytes(), 560u);
  EXPECT_EQ(l->total_bytes(), 5600u);
}

TEST_F(KvLayoutModels, GqaHeadDim16) {
  auto m = synth(128, 8, 2, 2);  // head dim 16: not a multiple of 32
  ASSERT_EQ(m->hparams().head_dim, 16u);
  check_all_types(*m, 2, 2, 16);
}

TEST_F(KvLayoutModels, GqaHeadDim64) {
  auto m = synth(256, 4, 2, 3);  // head dim 64
  ASSERT_EQ(m->hparams().head_dim, 64u);
  check_all_types(*m, 3, 2, 64);
  // Spot check by hand: q4_0 K + q8_KV V = 3 layers * 2 heads * (36 + 68) = 624 bytes a cell.
  auto l = m->kv_layout(7, DType::Q4_0, DType::Q8_KV);
  ASSERT_TRUE(l.is_ok());
  EXPECT_EQ(l->cell_bytes(), 624u);
}

// The cache allocates exactly what the layout says and addresses rows by its row_bytes.
TEST_F(KvLayoutModels, CacheRowsFollowTheLayout) {
  auto m = synth(256, 4, 2, 3);
  for (DType t : kCacheTypes) {
    auto l = m->kv_layout(5, t, t);
    ASSERT_TRUE(l.is_ok());
    KvCache cache(std::move(l).value());
    for (uint32_t il = 0; il < 3; ++il)
      for (uint32_t si = 0; si < 2; ++si) {
        const size_t rb = cache.layout().layer(il).streams[si].row_bytes;
        EXPECT_EQ(cache.row(il, si, 4) - cache.row(il, si, 0), static_cast<ptrdiff_t>(4 * rb)) << dtype_name(t);
      }
  }
}

TEST(KvLayout, MakeRefusesBadShapesAndDescribesScales) {
  KvLayout l;
  EXPECT_NE(KvLayout::make(4, {{{KvStream::K, DType::Q8_0, 48, 3}}}, &l), "");  // 16-element groups
  EXPECT_NE(KvLayout::make(4, {{{KvStream::K, DType::F16, 10, 3}}}, &l), "");   // 10 not divisible by 3
  EXPECT_NE(KvLayout::make(4, {{{KvStream::K, DType::F16, 0, 1}}}, &l), "");
  ASSERT_EQ(KvLayout::make(4, {{{KvStream::K, DType::Q8_KV, 96, 3}, {KvStream::V, DType::Q4_0, 96, 3}}}, &l), "");
  EXPECT_EQ(l.find(0, KvStream::K)->row_bytes, 3u * (4 + 32));
  EXPECT_EQ(l.find(0, KvStream::V)->row_bytes, 3u * 18);
  const std::string d = l.describe();
  EXPECT_NE(d.find("q8_KV"), std::string::npos) << d;
  EXPECT_NE(d.find("per-row"), std::string::npos) << d;
  EXPECT_NE(d.find("per-block32"), std::string::npos) << d;
  EXPECT_EQ(kv_scale_layout_for(DType::BF16), KvScaleLayout::None);
  // MLA latent rows: the RoPE part leads; its byte size locates the latent part when the type
  // allows addressing it separately (blocks that do not straddle the boundary, no row scale).
  ASSERT_EQ(KvLayout::make(4, {{{KvStream::MlaLatent, DType::Q8_0, 576, 1, 64}}}, &l), "");
  EXPECT_EQ(l.find(0, KvStream::MlaLatent)->latent_offset_bytes, 2u * 34);
  EXPECT_EQ(l.find(0, KvStream::MlaLatent)->latent_elems(), 512u);
  ASSERT_EQ(KvLayout::make(4, {{{KvStream::MlaLatent, DType::Q8_0, 576, 1, 48}}}, &l), "");
  EXPECT_EQ(l.find(0, KvStream::MlaLatent)->latent_offset_bytes, 0u);  // a block straddles: whole rows
  ASSERT_EQ(KvLayout::make(4, {{{KvStream::MlaLatent, DType::Q8_KV, 576, 1, 64}}}, &l), "");
  EXPECT_EQ(l.find(0, KvStream::MlaLatent)->latent_offset_bytes, 0u);  // one scale per row: whole rows
  ASSERT_EQ(KvLayout::make(4, {{{KvStream::MlaLatent, DType::BF16, 576, 1, 64}}}, &l), "");
  EXPECT_EQ(l.find(0, KvStream::MlaLatent)->latent_offset_bytes, 128u);
  EXPECT_NE(KvLayout::make(4, {{{KvStream::K, DType::F16, 64, 1, 16}}}, &l), "");           // a RoPE part only for MLA
  EXPECT_NE(KvLayout::make(4, {{{KvStream::MlaLatent, DType::F16, 64, 1, 64}}}, &l), "");   // no latent part left
  // Sizes that overflow are refused, not wrapped.
  EXPECT_NE(KvLayout::make(0xffffffffu, {{{KvStream::K, DType::F32, 0x80000000u, 1}}, {{KvStream::K, DType::F32, 0x80000000u, 1}}}, &l), "");
}

}  // namespace
}  // namespace kvstash
