// Kernel microbenchmarks: matrix x vector (decode) and matrix x matrix (prefill) for every
// weight type at TinyLlama's FFN shape, single-threaded so CPU time is meaningful on a busy
// machine. Reports weight GB/s (decode) and GFLOP/s (prefill).
#include <benchmark/benchmark.h>

#include <atomic>
#include <random>
#include <vector>

#include "core/kernels.h"
#include "core/matmul.h"

namespace kvstash {
namespace {

struct Problem {
  std::vector<uint8_t> w;
  MatRef ref;
  std::vector<float> x;
  std::vector<uint8_t> scratch;
  std::vector<float> y;
};

Problem make(DType t, int64_t rows, int64_t cols, int64_t n_tok) {
  Problem p;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  const size_t rb = dtype_row_bytes(t, cols);
  p.w.resize(rb * rows);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = nd(rng);
    quantize_row_ref(t, row.data(), p.w.data() + r * rb, cols);
  }
  p.ref = {t, p.w.data(), rows, cols, rb};
  p.x.resize(n_tok * cols);
  for (auto& v : p.x) v = nd(rng);
  p.scratch.resize(n_tok * dtype_row_bytes(DType::Q8_0, cols));
  p.y.resize(n_tok * rows);
  return p;
}

void BM_Gemm(benchmark::State& st) {
  const DType t = static_cast<DType>(st.range(0));
  const int64_t n_tok = st.range(1), rows = 5632, cols = 2048;
  const bool il8 = st.range(2) != 0;  // Interleaved8, as Model::repack_weights lays Q8_0/Q4_0 out
  Problem p = make(t, rows, cols, n_tok);
  std::vector<uint8_t> packed;
  if (il8) {
    packed.resize(p.w.size());
    repack_interleaved8(t, p.w.data(), rows, cols, packed.data());
    p.ref.data = packed.data();
    p.ref.layout = WeightLayout::Interleaved8;
  }
  ThreadPool pool(1);
  const KernelSet& k = active_kernels();
  for (auto _ : st) {
    Acts a = prepare_acts(pool, k, act_type_for(t), p.x.data(), n_tok, cols, p.scratch.data());
    matmul(pool, k, a, {{&p.ref, p.y.data(), rows}});
    benchmark::DoNotOptimize(p.y.data());
  }
  st.SetLabel(std::string(dtype_name(t)) + (il8 ? " interleaved8" : "") + (n_tok == 1 ? " matvec" : " matmul"));
  st.SetBytesProcessed(int64_t(p.w.size()) * st.iterations());
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * rows * cols * n_tok * st.iterations(), benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

// Args: weight type, tokens, layout (1: Interleaved8, the layout the engine runs Q8_0/Q4_0 in).
BENCHMARK(BM_Gemm)
    ->ArgsProduct({{int64_t(DType::Q8_0), int64_t(DType::Q4_0)}, {1, 64}, {1, 0}})
    ->ArgsProduct({{int64_t(DType::F16), int64_t(DType::BF16), int64_t(DType::F32)}, {1, 64}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime();

// One fork-join of the thread pool with an empty job: the fixed cost that every parallel matmul
// pays (decode runs ~5 per layer). Real time: the cost is waiting, not computing.
void BM_PoolDispatch(benchmark::State& st) {
  ThreadPool pool(static_cast<int>(st.range(0)));
  std::atomic<int> n{0};
  for (auto _ : st) pool.run([&](int, int) { n.fetch_add(1, std::memory_order_relaxed); });
  benchmark::DoNotOptimize(n.load());
}
BENCHMARK(BM_PoolDispatch)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace kvstash

BENCHMARK_MAIN();
