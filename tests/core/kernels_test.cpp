// Kernels: SIMD against the scalar reference (tolerance per type), and batch invariance:
// a token's result is bit-identical whatever the batch size, its place in the batch, the row
// range, or the number of threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/kernels.h"
#include "core/matmul.h"
#include "core/threadpool.h"

namespace kvstash {
namespace {

struct Problem {
  DType type;
  int64_t n_rows, n_cols;
  std::vector<uint8_t> w;
  std::vector<float> x;  // [n_tok, n_cols]
  MatRef ref() const { return {type, w.data(), n_rows, n_cols, dtype_row_bytes(type, n_cols)}; }
};

Problem make_problem(DType t, int64_t rows, int64_t cols, int64_t n_tok, uint32_t seed) {
  Problem p{t, rows, cols, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> row(cols);
  const size_t rb = dtype_row_bytes(t, cols);
  p.w.resize(rb * rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = nd(rng);
    quantize_row_ref(t, row.data(), p.w.data() + r * rb, cols);
  }
  p.x.resize(n_tok * cols);
  for (auto& v : p.x) v = nd(rng);
  return p;
}

// Runs the full threaded path: prepare activations, matmul.
std::vector<float> run(const KernelSet& k, ThreadPool& pool, const Problem& p, const float* x, int64_t n_tok) {
  const DType act = act_type_for(p.type);
  std::vector<uint8_t> scratch(n_tok * dtype_row_bytes(DType::Q8_0, (p.n_cols + 31) / 32 * 32) + 64);
  Acts a = prepare_acts(pool, k, act, x, n_tok, p.n_cols, scratch.data());
  std::vector<float> y(n_tok * p.n_rows, NAN);
  MatRef w = p.ref();
  matmul(pool, k, a, {{&w, y.data(), p.n_rows}});
  return y;
}

const DType kTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

// Exact dot products in double, from the dequantized weights and the activations as the
// kernel sees them (Q8_0 activations dequantized too).
double ref_dot(const Problem& p, int64_t r, const uint8_t* xact, DType act) {
  std::vector<float> w(p.n_cols), x(p.n_cols);
  dequantize_row_ref(p.type, p.w.data() + r * dtype_row_bytes(p.type, p.n_cols), w.data(), p.n_cols);
  dequantize_row_ref(act, xact, x.data(), p.n_cols);
  double s = 0;
  for (int64_t i = 0; i < p.n_cols; ++i) s += double(w[i]) * x[i];
  return s;
}

TEST(Kernels, SimdAndScalarMatchExactDotWithinTolerance) {
  const KernelSet* simd = avx2_kernels();
  ASSERT_NE(simd, nullptr) << "this machine has AVX2/FMA/F16C; the SIMD kernels must be available";
  const KernelSet& sc = scalar_kernels();
  for (DType t : kTypes) {
    const bool quant = t == DType::Q8_0 || t == DType::Q4_0;
    for (int64_t cols : quant ? std::vector<int64_t>{32, 256, 2048} : std::vector<int64_t>{8, 172, 2048}) {
      const int64_t rows = 37, n_tok = 5;
      Problem p = make_problem(t, rows, cols, n_tok, 11);
      const DType act = act_type_for(t);
      const size_t xrb = dtype_row_bytes(act, cols);
      // The same prepared activations for both kernel sets (reference quantization).
      std::vector<uint8_t> xa(n_tok * xrb);
      for (int64_t i = 0; i < n_tok; ++i) quantize_row_ref(act, p.x.data() + i * cols, xa.data() + i * xrb, cols);
      std::vector<float> y_simd(rows * n_tok), y_sc(rows * n_tok);
      MatRef w = p.ref();
      gemm_for(*simd, t)(w, xa.data(), xrb, n_tok, y_simd.data(), rows, 0, rows);
      gemm_for(sc, t)(w, xa.data(), xrb, n_tok, y_sc.data(), rows, 0, rows);
      for (int64_t i = 0; i < n_tok; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          const double exact = ref_dot(p, r, xa.data() + i * xrb, act);
          // Stated tolerance: float accumulation of `cols` terms of unit scale: 1e-5 * sqrt(cols) absolute
          // (activations and weights ~N(0,1): the exact sum has magnitude ~sqrt(cols)).
          const double tol = 1e-5 * std::sqrt(double(cols)) * (quant ? 4.0 : 1.0);
          EXPECT_NEAR(y_simd[i * rows + r], exact, tol) << dtype_name(t) << " cols " << cols;
          EXPECT_NEAR(y_sc[i * rows + r], exact, tol) << dtype_name(t) << " cols " << cols;
        }
    }
  }
}

TEST(Kernels, SimdActivationQuantizationMatchesReference) {
  const KernelSet* simd = avx2_kernels();
  ASSERT_NE(simd, nullptr);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> x(4096);
  for (auto& v : x) v = nd(rng);
  x[100] = 0.0f;
  for (int i = 64; i < 96; ++i) x[i] = 0.0f;  // an all-zero block
  std::vector<BlockQ8_0> a(128), b(128);
  simd->quantize_row_q8_0(x.data(), a.data(), 4096);
  quantize_row_ref(DType::Q8_0, x.data(), b.data(), 4096);
  for (int i = 0; i < 128; ++i) {
    EXPECT_EQ(a[i].d, b[i].d) << i;
    // Ties round to even in SIMD and away from zero in the reference: at most 1 apart.
    for (int j = 0; j < 32; ++j) EXPECT_LE(std::abs(a[i].qs[j] - b[i].qs[j]), 1) << i << "," << j;
  }
}

TEST(Kernels, BatchInvariantAcrossBatchSizeSplitsAndThreads) {
  for (const KernelSet* k : {avx2_kernels(), &scalar_kernels()}) {
    ASSERT_NE(k, nullptr);
    for (DType t : kTypes) {
      const int64_t n_tok = 13, cols = 256, rows = 67;  // rows: not a multiple of the tile or grain
      Problem p = make_problem(t, rows, cols, n_tok, 21);
      ThreadPool pool1(1), pool2(2), pool3(3);
      const std::vector<float> full = run(*k, pool2, p, p.x.data(), n_tok);
      // Each token alone (decode path), with 1 and 3 threads.
      for (int64_t i = 0; i < n_tok; ++i) {
        for (ThreadPool* pool : {&pool1, &pool3}) {
          const std::vector<float> one = run(*k, *pool, p, p.x.data() + i * cols, 1);
          ASSERT_EQ(std::memcmp(one.data(), full.data() + i * rows, rows * sizeof(float)), 0)
              << k->name << " " << dtype_name(t) << " token " << i << " threads " << pool->n_threads();
        }
      }
      // The batch split into chunks 5 + 8.
      const std::vector<float> a = run(*k, pool3, p, p.x.data(), 5);
      const std::vector<float> b = run(*k, pool1, p, p.x.data() + 5 * cols, 8);
      ASSERT_EQ(std::memcmp(a.data(), full.data(), a.size() * sizeof(float)), 0) << k->name << " " << dtype_name(t);
      ASSERT_EQ(std::memcmp(b.data(), full.data() + 5 * rows, b.size() * sizeof(float)), 0) << k->name << " " << dtype_name(t);
    }
  }
}

// ---- Interleaved8 (repacked Q8_0 / Q4_0 weights) ----

struct Repacked {
  std::vector<uint8_t> bytes;
  MatRef w;
};

Repacked repack(const Problem& p) {
  Repacked r{std::vector<uint8_t>(p.w.size()), p.ref()};
  repack_interleaved8(p.type, p.w.data(), p.n_rows, p.n_cols, r.bytes.data());
  r.w.data = r.bytes.data();
  r.w.layout = WeightLayout::Interleaved8;
  return r;
}

// The layout as docs and kernels.h state it, spelled out independently of Interleaved8Geom:
// group g, block b at g * 8 * row_bytes + b * 8 * block_bytes; 8 fp16 scales; then chunk-major
// 4-byte chunks of the 8 rows.
TEST(Kernels, Interleaved8RepackPlacesEveryByte) {
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    const int64_t rows = 24, cols = 96;
    Problem p = make_problem(t, rows, cols, 1, 3);
    Repacked r = repack(p);
    const size_t rb = dtype_row_bytes(t, cols), bb = dtype_traits(t).block_bytes, nq = bb - 2;
    ASSERT_EQ(r.bytes.size(), rows * rb);
    size_t checked = 0;
    for (int64_t row = 0; row < rows; ++row)
      for (int64_t b = 0; b < cols / 32; ++b) {
        const uint8_t* src = p.w.data() + row * rb + b * bb;
        const uint8_t* blk = r.bytes.data() + (row / 8) * 8 * rb + b * 8 * bb;
        const int64_t j = row % 8;
        ASSERT_EQ(std::memcmp(blk + 2 * j, src, 2), 0) << dtype_name(t) << " scale of row " << row << " block " << b;
        for (size_t i = 0; i < nq; ++i) {
          ASSERT_EQ(blk[16 + (i / 4) * 32 + j * 4 + i % 4], src[2 + i]) << dtype_name(t) << " row " << row << " block " << b << " byte " << i;
          ++checked;
        }
      }
    EXPECT_EQ(checked, size_t(rows * (cols / 32) * nq));
  }
}

// Both kernel sets compute the same arithmetic on the repacked layout: bit-identical to each
// other, within the gemm tolerance of the exact dot, for any row range (partial groups included),
// and the rows outside [r0, r1) are left untouched.
TEST(Kernels, Interleaved8SimdEqualsScalarBitForBit) {
  const KernelSet* simd = avx2_kernels();
  ASSERT_NE(simd, nullptr);
  const KernelSet& sc = scalar_kernels();
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    for (int64_t cols : {32, 256, 2048}) {
      for (int64_t rows : {8, 40, 136}) {
        for (int64_t n_tok : {1, 3, 7}) {  // decode (one tile: block values prepared once); 4 + 3 single tokens
          Problem p = make_problem(t, rows, cols, n_tok, 31);
          Repacked r = repack(p);
          const size_t xrb = dtype_row_bytes(DType::Q8_0, cols);
          std::vector<uint8_t> xa(n_tok * xrb);
          for (int64_t i = 0; i < n_tok; ++i) quantize_row_ref(DType::Q8_0, p.x.data() + i * cols, xa.data() + i * xrb, cols);
          for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, rows}, {3, rows - 2}, {rows - 8, rows}, {5, 7}}) {
            std::vector<float> y_simd(rows * n_tok, NAN), y_sc(rows * n_tok, NAN), y_rm(rows * n_tok, NAN);
            gemm_for(*simd, t)(r.w, xa.data(), xrb, n_tok, y_simd.data(), rows, r0, r1);
            gemm_for(sc, t)(r.w, xa.data(), xrb, n_tok, y_sc.data(), rows, r0, r1);
            ASSERT_EQ(std::memcmp(y_simd.data(), y_sc.data(), y_sc.size() * sizeof(float)), 0)
                << dtype_name(t) << " cols " << cols << " rows " << rows << " tokens " << n_tok << " range " << r0 << ".." << r1;
            for (int64_t i = 0; i < n_tok; ++i)
              for (int64_t row = 0; row < rows; ++row) {
                const float v = y_simd[i * rows + row];
                if (row < r0 || row >= r1) {
                  EXPECT_TRUE(std::isnan(v)) << "row " << row << " outside " << r0 << ".." << r1 << " was written";
                  continue;
                }
                const double exact = ref_dot(p, row, xa.data() + i * xrb, DType::Q8_0);
                EXPECT_NEAR(v, exact, 4e-5 * std::sqrt(double(cols))) << dtype_name(t) << " cols " << cols << " row " << row;
              }
          }
        }
      }
    }
  }
}

// matmul / matmul_tasks over repacked weights: bit-identical whatever the batch, chunking and
// thread count, for row counts that are a multiple of 8 but not of the 16-row grain, span several
// 64-row blocks, and a mixed list of a repacked and a row-major matrix.
TEST(Kernels, Interleaved8BatchInvariantAcrossBatchSizeSplitsAndThreads) {
  for (const KernelSet* k : {avx2_kernels(), &scalar_kernels()}) {
    ASSERT_NE(k, nullptr);
    for (DType t : {DType::Q8_0, DType::Q4_0}) {
      const int64_t n_tok = 13, cols = 256;
      Problem p = make_problem(t, 200, cols, n_tok, 41);     // 25 groups, 13 grains, 4 row blocks
      Problem q = make_problem(t, 67, cols, n_tok, 43);      // stays row-major (67 % 8 != 0)
      Repacked r = repack(p);
      const MatRef wq = q.ref();
      auto run2 = [&](ThreadPool& pool, const float* x, int64_t n) {
        std::vector<uint8_t> scratch(n * dtype_row_bytes(DType::Q8_0, cols));
        Acts a = prepare_acts(pool, *k, DType::Q8_0, x, n, cols, scratch.data());
        std::vector<float> y(n * (p.n_rows + q.n_rows), NAN);
        matmul(pool, *k, a, {{&r.w, y.data(), p.n_rows + q.n_rows}, {&wq, y.data() + p.n_rows, p.n_rows + q.n_rows}});
        // The same products as tasks, one per matrix: identical to matmul.
        std::vector<float> y2(y.size(), NAN);
        const GemmTask tasks[] = {{&r.w, a.data, a.row_bytes, n, y2.data(), p.n_rows + q.n_rows},
                                  {&wq, a.data, a.row_bytes, n, y2.data() + p.n_rows, p.n_rows + q.n_rows}};
        matmul_tasks(pool, *k, tasks, 2);
        EXPECT_EQ(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)), 0) << k->name << " " << dtype_name(t);
        return y;
      };
      ThreadPool pool1(1), pool2(2), pool3(3);
      const int64_t ld = p.n_rows + q.n_rows;
      const std::vector<float> full = run2(pool2, p.x.data(), n_tok);
      for (int64_t i = 0; i < n_tok; ++i) {
        for (ThreadPool* pool : {&pool1, &pool3}) {
          const std::vector<float> one = run2(*pool, p.x.data() + i * cols, 1);
          ASSERT_EQ(std::memcmp(one.data(), full.data() + i * ld, ld * sizeof(float)), 0)
              << k->name << " " << dtype_name(t) << " token " << i << " threads " << pool->n_threads();
        }
      }
      const std::vector<float> a = run2(pool3, p.x.data(), 5);
      const std::vector<float> b = run2(pool1, p.x.data() + 5 * cols, 8);
      ASSERT_EQ(std::memcmp(a.data(), full.data(), a.size() * sizeof(float)), 0) << k->name << " " << dtype_name(t);
      ASSERT_EQ(std::memcmp(b.data(), full.data() + 5 * ld, b.size() * sizeof(float)), 0) << k->name << " " << dtype_name(t);
    }
  }
}

TEST(Kernels, AttentionRowHelpers) {
  const KernelSet* simd = avx2_kernels();
  ASSERT_NE(simd, nullptr);
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (int64_t n : {8, 64, 100}) {
      std::vector<float> src(n), x(n), deq(n);
      for (auto& v : src) v = nd(rng);
      for (auto& v : x) v = nd(rng);
      std::vector<uint8_t> row(dtype_row_bytes(t, n)), row_ref(dtype_row_bytes(t, n));
      simd->store_row(t, src.data(), row.data(), n);
      quantize_row_ref(t, src.data(), row_ref.data(), n);
      ASSERT_EQ(row, row_ref) << "store_row must round exactly like the reference, " << dtype_name(t);
      dequantize_row_ref(t, row.data(), deq.data(), n);
      double exact = 0;
      for (int64_t i = 0; i < n; ++i) exact += double(deq[i]) * x[i];
      EXPECT_NEAR(simd->dot_row(t, row.data(), x.data(), n), exact, 1e-5 * std::sqrt(double(n)));
      EXPECT_NEAR(scalar_kernels().dot_row(t, row.data(), x.data(), n), exact, 1e-5 * std::sqrt(double(n)));
      std::vector<float> y1(n, 1.0f), y2(n, 1.0f);
      simd->axpy_row(t, row.data(), 0.5f, y1.data(), n);
      scalar_kernels().axpy_row(t, row.data(), 0.5f, y2.data(), n);
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y1[i], 1.0f + 0.5f * deq[i], 1e-6f);
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y2[i], 1.0f + 0.5f * deq[i], 1e-6f);
    }
  }
}

// Quantized KV cache rows (q8_0, q4_0, q8_KV): store_row, the fused dequantizing axpy, and the
// integer dot with a converted query. Tolerances (inputs ~N(0,1), per element / per dot):
//  - store_row: bit-identical to quantize_row_ref in both kernel sets;
//  - axpy: |y - (y0 + a * deq)| <= 1e-6 (one rounding of a * d * q, plus FMA vs mul+add);
//  - dot (q8_0, q4_0): |dot - exact| <= 4e-5 * sqrt(n) (float accumulation of per-block sums,
//    as in the gemm test); q8_KV: the integer sum is exact, so SIMD == scalar bit for bit and
//    |dot - exact| <= 1e-6 * |exact| + 1e-6 (one float multiply of the scales).
TEST(Kernels, QuantizedCacheRowHelpers) {
  const KernelSet* simd = avx2_kernels();
  ASSERT_NE(simd, nullptr);
  const KernelSet& sc = scalar_kernels();
  std::mt19937 rng(13);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q8_KV}) {
    const std::vector<int64_t> sizes = t == DType::Q8_KV ? std::vector<int64_t>{1, 8, 33, 64, 100, 256} : std::vector<int64_t>{32, 64, 128, 256};
    const DType qt = vec_dot_type(t);
    EXPECT_EQ(qt, t == DType::Q8_KV ? DType::Q8_KV : DType::Q8_0);
    for (int64_t n : sizes) {
      for (int rep = 0; rep < 8; ++rep) {
        std::vector<float> src(n), q(n), deq(n), qdeq(n);
        for (auto& v : src) v = nd(rng);
        for (auto& v : q) v = nd(rng);
        std::vector<uint8_t> row(dtype_row_bytes(t, n)), row_sc(row.size()), row_ref(row.size());
        simd->store_row(t, src.data(), row.data(), n);
        sc.store_row(t, src.data(), row_sc.data(), n);
        quantize_row_ref(t, src.data(), row_ref.data(), n);
        ASSERT_EQ(row, row_ref) << dtype_name(t) << " n " << n;
        ASSERT_EQ(row_sc, row_ref) << dtype_name(t) << " n " << n;
        dequantize_row_ref(t, row.data(), deq.data(), n);

        // The query as the attention path converts it, once per kernel set.
        std::vector<uint8_t> qs(dtype_row_bytes(qt, n)), qv(qs.size());
        if (qt == DType::Q8_KV) {
          simd->quantize_row_q8_kv(q.data(), qs.data(), n);
          sc.quantize_row_q8_kv(q.data(), qv.data(), n);
        } else {
          simd->quantize_row_q8_0(q.data(), qs.data(), n);
          sc.quantize_row_q8_0(q.data(), qv.data(), n);
        }
        for (const auto* qrow : {&qs, &qv}) {
          dequantize_row_ref(qt, qrow->data(), qdeq.data(), n);
          double exact = 0;
          for (int64_t i = 0; i < n; ++i) exact += double(deq[i]) * qdeq[i];
          const float ds = simd->dot_row_q(t, row.data(), qrow->data(), n);
          const float dc = sc.dot_row_q(t, row.data(), qrow->data(), n);
          if (t == DType::Q8_KV) {
            EXPECT_EQ(ds, dc) << "n " << n;
            EXPECT_NEAR(dc, exact, 1e-6 * std::fabs(exact) + 1e-6) << "n " << n;
          } else {
            EXPECT_NEAR(ds, exact, 4e-5 * std::sqrt(double(n))) << dtype_name(t) << " n " << n;
            EXPECT_NEAR(dc, exact, 4e-5 * std::sqrt(double(n))) << dtype_name(t) << " n " << n;
          }
        }

        std::vector<float> y1(n), y2(n), y0(n);
        for (auto& v : y0) v = nd(rng);
        y1 = y0;
        y2 = y0;
        const float a = 0.37f;
        simd->axpy_row(t, row.data(), a, y1.data(), n);
        sc.axpy_row(t, row.data(), a, y2.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          const double want = double(y0[i]) + double(a) * deq[i];
          EXPECT_NEAR(y1[i], want, 1e-6) << dtype_name(t) << " n " << n << " i " << i;
          EXPECT_NEAR(y2[i], want, 1e-6) << dtype_name(t) << " n " << n << " i " << i;
        }
      }
    }
  }
}

// The SIMD q8_KV query quantizer agrees with the reference: same scale, values at most 1 apart
// (ties round to even in SIMD, away from zero in the reference).
TEST(Kernels, SimdQ8KvQuantizationMatchesReference) {
  const KernelSet* simd = avx2_kernels();
  ASSERT_NE(simd, nullptr);
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int64_t n : {1, 7, 32, 64, 65, 128, 300}) {
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    std::vector<uint8_t> a(dtype_row_bytes(DType::Q8_KV, n)), b(a.size());
    simd->quantize_row_q8_kv(x.data(), a.data(), n);
    quantize_row_ref(DType::Q8_KV, x.data(), b.data(), n);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), 4), 0) << "scale, n " << n;
    for (int64_t i = 0; i < n; ++i) {
      const int qa = static_cast<int8_t>(a[4 + i]), qb = static_cast<int8_t>(b[4 + i]);
      EXPECT_LE(std::abs(qa - qb), 1) << "n " << n << " i " << i;
      EXPECT_LE(std::abs(qa), 127);
    }
  }
  // All zeros: scale 0, values 0.
  std::vector<float> z(64, 0.0f);
  std::vector<uint8_t> zq(dtype_row_bytes(DType::Q8_KV, 64), 0xff);
  simd->quantize_row_q8_kv(z.data(), zq.data(), 64);
  for (uint8_t v : zq) EXPECT_EQ(v, 0);
}

TEST(ThreadPool, RunsEveryThreadOnceAndSplitsRanges) {
  for (int n : {1, 2, 4}) {
    ThreadPool pool(n);
    std::vector<int> hits(n, 0);
    for (int rep = 0; rep < 1000; ++rep) pool.run([&](int ith, int nth) {
      ASSERT_EQ(nth, n);
      hits[ith]++;
    });
    for (int i = 0; i < n; ++i) EXPECT_EQ(hits[i], 1000);
  }
  // split_range covers [0, n) exactly once with grain-aligned starts.
  for (int64_t n : {0, 1, 15, 16, 17, 1000}) {
    for (int nth : {1, 2, 3, 7}) {
      int64_t covered = 0, prev_end = 0;
      for (int i = 0; i < nth; ++i) {
        int64_t b, e;
        split_range(n, i, nth, 16, &b, &e);
        EXPECT_EQ(b, prev_end);
        EXPECT_EQ(b % 16 == 0 || b == n, true);
        covered += e - b;
        prev_end = e;
      }
      EXPECT_EQ(covered, n);
      EXPECT_EQ(prev_end, n);
    }
  }
}

}  // namespace
}  // namespace kvstash
