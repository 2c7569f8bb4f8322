// Tensor types: traits, the row-size function, fp16/bf16 conversions, and ggml block formats.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace kvstash {
namespace {

TEST(DType, TraitsMatchGgml) {
  EXPECT_EQ(dtype_traits(DType::F32).block_bytes, 4u);
  EXPECT_EQ(dtype_traits(DType::F16).block_bytes, 2u);
  EXPECT_EQ(dtype_traits(DType::BF16).block_bytes, 2u);
  EXPECT_EQ(dtype_traits(DType::Q8_0).block_elems, 32u);
  EXPECT_EQ(dtype_traits(DType::Q8_0).block_bytes, 34u);
  EXPECT_EQ(dtype_traits(DType::Q4_0).block_elems, 32u);
  EXPECT_EQ(dtype_traits(DType::Q4_0).block_bytes, 18u);
  // ggml type ids
  EXPECT_EQ(dtype_traits_by_id(0)->type, DType::F32);
  EXPECT_EQ(dtype_traits_by_id(1)->type, DType::F16);
  EXPECT_EQ(dtype_traits_by_id(2)->type, DType::Q4_0);
  EXPECT_EQ(dtype_traits_by_id(8)->type, DType::Q8_0);
  EXPECT_EQ(dtype_traits_by_id(30)->type, DType::BF16);
  EXPECT_EQ(dtype_traits_by_id(3), nullptr);  // q4_1: not supported
  EXPECT_EQ(dtype_from_name("q8_0"), DType::Q8_0);
  EXPECT_FALSE(dtype_from_name("q5_k").has_value());
}

TEST(DType, RowBytes) {
  EXPECT_EQ(dtype_row_bytes(DType::F32, 172), 688u);
  EXPECT_EQ(dtype_row_bytes(DType::F16, 2048), 4096u);
  EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 2048), 64u * 34u);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 5632), 176u * 18u);
  EXPECT_FALSE(dtype_row_bytes_checked(DType::Q8_0, 33).has_value());
  EXPECT_FALSE(dtype_row_bytes_checked(DType::F32, UINT64_MAX / 2).has_value());  // overflow
}

// F16C instructions as the reference for the software conversions.
__attribute__((target("f16c"))) float hw_h2f(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_f2h(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

TEST(DType, Fp16MatchesF16cForAllHalfValuesAndManyFloats) {
  ASSERT_TRUE(__builtin_cpu_supports("f16c"));
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ref = hw_h2f(static_cast<uint16_t>(h));
    const float got = fp16_to_fp32(static_cast<fp16_t>(h));
    if (std::isnan(ref)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      EXPECT_EQ(std::memcmp(&ref, &got, 4), 0) << "half " << h;
    }
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    const uint16_t ref = hw_f2h(f);
    ASSERT_EQ(fp32_to_fp16(f), ref) << "float bits " << u;
  }
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
  EXPECT_EQ(fp32_to_bf16(1.00390625f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(1.01171875f), 0x3f82);  // halfway, rounds up to even
  EXPECT_EQ(bf16_to_fp32(0x4049), 3.140625f);
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
}

// Hand-computed ggml blocks.
TEST(DType, Q8_0BlockFormat) {
  float x[32];
  for (int i = 0; i < 32; ++i) x[i] = (i - 16) * 0.5f;  // amax = 8 at i = 0
  BlockQ8_0 b;
  quantize_row_ref(DType::Q8_0, x, &b, 32);
  EXPECT_EQ(b.d, fp32_to_fp16(8.0f / 127.0f));
  EXPECT_EQ(b.qs[0], -127);
  EXPECT_EQ(b.qs[16], 0);
  EXPECT_EQ(b.qs[31], static_cast<int8_t>(std::roundf(7.5f * 127.0f / 8.0f)));
  float y[32];
  dequantize_row_ref(DType::Q8_0, &b, y, 32);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(y[i], x[i], 8.0f / 127.0f / 2 + 1e-3f);
}

TEST(DType, Q4_0BlockFormat) {
  float x[32];
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i) - 8.0f;  // max |x| = 23 at i = 31, positive
  BlockQ4_0 b;
  quantize_row_ref(DType::Q4_0, x, &b, 32);
  // d = max / -8 = -23/8; element 31 -> 23 / (-23/8) = -8 -> nibble 0.
  EXPECT_EQ(b.d, fp32_to_fp16(-23.0f / 8.0f));
  EXPECT_EQ(b.qs[15] >> 4, 0);
  // element 8 (x = 0) -> nibble 8 in the low half of byte 8.
  EXPECT_EQ(b.qs[8] & 0x0f, 8);
  float y[32];
  dequantize_row_ref(DType::Q4_0, &b, y, 32);
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(y[i], x[i], std::fabs(d) / 2 + 1e-3f) << i;
}

// Issue 6 (found by fuzz_state converting corrupted rows): a NaN or inf, or a block of
// denormals whose 1 / d overflows, reached an undefined float -> int8 cast. Now NaN -> 0 and
// out-of-range values saturate; blocks of finite normal values are unchanged (ggml's results).
TEST(DType, Issue6QuantizeNonFiniteAndTinyBlocksIsDefined) {
  float x[32];
  BlockQ8_0 q8;
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i - 16);
  x[3] = NAN;
  quantize_row_ref(DType::Q8_0, x, &q8, 32);
  EXPECT_EQ(q8.d, fp32_to_fp16(16.0f / 127.0f));
  EXPECT_EQ(q8.qs[0], -127);
  EXPECT_EQ(q8.qs[3], 0);
  EXPECT_EQ(q8.qs[31], static_cast<int8_t>(std::roundf(15.0f * 127.0f / 16.0f)));
  x[3] = -INFINITY;  // d = inf, 1 / d = 0: every value becomes 0 (-inf * 0 is NaN)
  quantize_row_ref(DType::Q8_0, x, &q8, 32);
  EXPECT_EQ(q8.d, 0x7C00);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q8.qs[i], 0) << i;
  for (int i = 0; i < 32; ++i) x[i] = (i - 16) * 1e-40f;  // 1 / d overflows to inf
  quantize_row_ref(DType::Q8_0, x, &q8, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q8.qs[i], i < 16 ? -128 : i == 16 ? 0 : 127) << i;

  BlockQ4_0 q4;
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i) - 8.0f;
  x[3] = NAN;
  quantize_row_ref(DType::Q4_0, x, &q4, 32);
  EXPECT_EQ(q4.d, fp32_to_fp16(-23.0f / 8.0f));
  EXPECT_EQ(q4.qs[3] & 0x0f, 0);
  EXPECT_EQ(q4.qs[8] & 0x0f, 8);
  for (int i = 0; i < 32; ++i) x[i] = (i - 8) * 1e-40f;  // d < 0, 1 / d = -inf
  quantize_row_ref(DType::Q4_0, x, &q4, 32);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q4.qs[j], j < 8 ? 0x0F : 0x00) << j;
}

TEST(DType, RoundTripErrorBounds) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(4096), y(4096);
  for (auto& v : x) v = nd(rng);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    std::vector<uint8_t> q(dtype_row_bytes(t, x.size()));
    quantize_row_ref(t, x.data(), q.data(), static_cast<int64_t>(x.size()));
    dequantize_row_ref(t, q.data(), y.data(), static_cast<int64_t>(x.size()));
    double err = 0, ref = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      err += (x[i] - y[i]) * (x[i] - y[i]);
      ref += x[i] * x[i];
    }
    const double rel = std::sqrt(err / ref);
    // Relative RMS error bounds per type (f32 exact; f16 ~2^-11; bf16 ~2^-8; q8_0 ~0.5%; q4_0 ~10%).
    const double bound = t == DType::F32 ? 0 : t == DType::F16 ? 5e-4 : t == DType::BF16 ? 4e-3 : t == DType::Q8_0 ? 1e-2 : 0.12;
    EXPECT_LE(rel, bound) << dtype_name(t);
  }
}


// q8_KV: an internal cache type, one float32 scale per row, never a GGUF tensor type.
TEST(DType, Q8KvTraitsAndRowBytes) {
  const DTypeTraits& tr = dtype_traits(DType::Q8_KV);
  EXPECT_STREQ(tr.name, "q8_KV");
  EXPECT_TRUE(tr.quantized);
  EXPECT_FALSE(tr.gguf_ok);
  EXPECT_GE(static_cast<uint32_t>(DType::Q8_KV), kFirstInternalTypeId);
  // The GGUF reader's lookup refuses it; every ggml type kvstash reads stays accepted.
  EXPECT_EQ(dtype_traits_by_id(static_cast<uint32_t>(DType::Q8_KV)), nullptr);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    ASSERT_NE(dtype_traits_by_id(static_cast<uint32_t>(t)), nullptr) << dtype_name(t);
    EXPECT_TRUE(dtype_traits(t).gguf_ok);
    EXPECT_EQ(dtype_traits(t).row_header_bytes, 0u);
  }
  EXPECT_EQ(dtype_from_name("q8_KV"), DType::Q8_KV);
  // 4-byte scale + one byte per element, for any element count.
  for (uint64_t n : {1u, 8u, 33u, 64u, 128u}) EXPECT_EQ(dtype_row_bytes(DType::Q8_KV, n), 4 + n) << n;
  EXPECT_FALSE(dtype_row_bytes_checked(DType::Q8_KV, UINT64_MAX - 2).has_value());  // overflow with the header
}

TEST(DType, Q8KvRowFormat) {
  float x[40];
  for (int i = 0; i < 40; ++i) x[i] = (i - 20) * 0.25f;  // amax = 5 at i = 0
  std::vector<uint8_t> row(dtype_row_bytes(DType::Q8_KV, 40));
  quantize_row_ref(DType::Q8_KV, x, row.data(), 40);
  float d;
  std::memcpy(&d, row.data(), 4);
  EXPECT_EQ(d, 5.0f / 127.0f);  // float32 scale, not rounded to fp16
  const auto* q = reinterpret_cast<const int8_t*>(row.data() + 4);
  EXPECT_EQ(q[0], -127);
  EXPECT_EQ(q[20], 0);
  EXPECT_EQ(q[39], static_cast<int8_t>(std::roundf(4.75f * (1.0f / d))));
  float y[40];
  dequantize_row_ref(DType::Q8_KV, row.data(), y, 40);
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(y[i], q[i] * d);
    EXPECT_NEAR(y[i], x[i], d / 2 + 1e-6f) << i;
  }
  // An all-zero row has scale 0 and zero values.
  std::vector<float> z(16, 0.0f), zy(16, 1.0f);
  std::vector<uint8_t> zrow(dtype_row_bytes(DType::Q8_KV, 16), 0xff);
  quantize_row_ref(DType::Q8_KV, z.data(), zrow.data(), 16);
  dequantize_row_ref(DType::Q8_KV, zrow.data(), zy.data(), 16);
  for (float v : zy) EXPECT_EQ(v, 0.0f);
}

TEST(DType, Q8KvRoundTripErrorPerHeadRow) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n = 64;  // one head row
  double err = 0, ref = 0;
  std::vector<float> x(n), y(n);
  std::vector<uint8_t> q(dtype_row_bytes(DType::Q8_KV, n));
  for (int rep = 0; rep < 64; ++rep) {
    for (auto& v : x) v = nd(rng);
    quantize_row_ref(DType::Q8_KV, x.data(), q.data(), n);
    dequantize_row_ref(DType::Q8_KV, q.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      err += (x[i] - y[i]) * (x[i] - y[i]);
      ref += x[i] * x[i];
    }
  }
  // One scale per 64 values: about the q8_0 error (~0.5% relative RMS); bound 1e-2 like q8_0.
  EXPECT_LE(std::sqrt(err / ref), 1e-2);
}

}  // namespace
}  // namespace kvstash
