// The machine's limits that kvstash is measured against (docs/performance.md):
//   triad       STREAM-like a[i] = b[i] + s * c[i] over 3 x 256 MiB, on all threads (GB/s counts 3 arrays)
//   read        read-only stream over 768 MiB on all threads (core/membw.h, the probe behind
//               `kvstash bench`'s roof column): the roof for decode, which only reads weights
//               (triad also writes, and its write-allocate traffic is not counted in its GB/s)
//   fma_peak    fp32 FMA throughput, 10 independent accumulators per thread
//   file_write  page-cache write of 512 MiB (no fsync) over the previous file (O_TRUNC); with
//               fdatasync; and, sized like a 4096-token f16 TinyLlama state file (88 MiB), written to a
//               new file renamed over the previous one, as an atomic save without fsync does
//               (ext4 starts writeback of the new file and frees the old one's pages in rename)
//   file_read   page-cache read of the same file into one reused 4 MiB buffer (stays in the CPU
//               caches: an upper bound that no restore into a large cache can reach)
//   file_read_into  page-cache read of a file (88 MiB, and 512 MiB) into a destination as large
//               as the file (touched beforehand), by 1 thread and by all threads (disjoint preads):
//               the fair bound for restoring a state file into a KV cache
// Threads: KVSTASH_BENCH_THREADS (default: all CPUs). Files go to $TMPDIR.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <immintrin.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/membw.h"
#include "core/threadpool.h"

namespace kvstash {
namespace {

int n_threads() {
  const char* e = std::getenv("KVSTASH_BENCH_THREADS");
  return e && *e ? std::atoi(e) : ThreadPool::default_threads();
}

void BM_Triad(benchmark::State& st) {
  const size_t n = size_t(256) << 20 >> 2;  // 256 MiB of floats per array
  std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
  ThreadPool pool(n_threads());
  pool.run([&](int ith, int nth) {  // first touch on the thread that will use the pages
    int64_t i0, i1;
    split_range(int64_t(n), ith, nth, 4096, &i0, &i1);
    std::memset(a.data() + i0, 0, (i1 - i0) * 4);
  });
  for (auto _ : st) {
    pool.run([&](int ith, int nth) {
      int64_t i0, i1;
      split_range(int64_t(n), ith, nth, 4096, &i0, &i1);
      float* __restrict pa = a.data();
      const float* __restrict pb = b.data();
      const float* __restrict pc = c.data();
      for (int64_t i = i0; i < i1; ++i) pa[i] = pb[i] + 3.0f * pc[i];
    });
    benchmark::DoNotOptimize(a.data());
  }
  st.SetBytesProcessed(int64_t(3 * n * 4) * st.iterations());
  st.counters["threads"] = pool.n_threads();
}
BENCHMARK(BM_Triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

void BM_Read(benchmark::State& st) {
  ThreadPool pool(n_threads());
  MemReadProbe probe(pool, size_t(768) << 20);  // the size of triad's three arrays
  for (auto _ : st) benchmark::DoNotOptimize(probe.measure(pool));
  st.SetBytesProcessed(int64_t(probe.bytes()) * st.iterations());
  st.counters["threads"] = pool.n_threads();
}
BENCHMARK(BM_Read)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

__attribute__((target("avx2,fma"))) float fma_loop(int64_t iters) {
  __m256 acc[10];
  for (auto& v : acc) v = _mm256_set1_ps(1.0f);
  const __m256 m = _mm256_set1_ps(0.999999f), ad = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : acc) v = _mm256_fmadd_ps(v, m, ad);
  float out = 0;
  for (auto& v : acc) out += _mm256_cvtss_f32(v);
  return out;
}

void BM_FmaPeak(benchmark::State& st) {
  ThreadPool pool(n_threads());
  const int64_t iters = 20'000'000;
  for (auto _ : st) {
    pool.run([&](int, int) { benchmark::DoNotOptimize(fma_loop(iters)); });
  }
  st.counters["FLOP/s"] = benchmark::Counter(double(iters) * 10 * 16 * pool.n_threads() * st.iterations(), benchmark::Counter::kIsRate);
  st.counters["threads"] = pool.n_threads();
}
BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMillisecond)->UseRealTime();

const std::string& bench_file() {
  static const std::string p = (std::filesystem::temp_directory_path() / "kvstash-machine-bench.bin").string();
  return p;
}

void write_file(bool durable, size_t bytes, const std::vector<char>& buf) {
  const int fd = ::open(bench_file().c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (size_t done = 0; done < bytes;) done += static_cast<size_t>(::write(fd, buf.data(), std::min(buf.size(), bytes - done)));
  if (durable) ::fdatasync(fd);
  ::close(fd);
}

void BM_FileWrite(benchmark::State& st) {
  const bool durable = st.range(0) != 0;
  const size_t bytes = size_t(512) << 20;
  std::vector<char> buf(size_t(4) << 20, 'x');
  for (auto _ : st) write_file(durable, bytes, buf);
  st.SetBytesProcessed(int64_t(bytes) * st.iterations());
  st.SetLabel(durable ? "write + fdatasync" : "page cache");
}
BENCHMARK(BM_FileWrite)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

void BM_FileWriteRename(benchmark::State& st) {
  const size_t bytes = size_t(88) << 20;
  std::vector<char> buf(size_t(4) << 20, 'r');
  const std::string tmp = bench_file() + ".tmp";
  write_file(false, bytes, buf);
  for (auto _ : st) {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    for (size_t done = 0; done < bytes;) done += static_cast<size_t>(::write(fd, buf.data(), std::min(buf.size(), bytes - done)));
    ::close(fd);
    ::rename(tmp.c_str(), bench_file().c_str());
    st.PauseTiming();  // no writeback in flight when the next write starts
    const int sfd = ::open(bench_file().c_str(), O_RDONLY);
    ::fdatasync(sfd);
    ::close(sfd);
    st.ResumeTiming();
  }
  st.SetBytesProcessed(int64_t(bytes) * st.iterations());
  st.SetLabel("new file + rename over (page cache)");
  std::filesystem::remove(bench_file());
}
BENCHMARK(BM_FileWriteRename)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

void BM_FileRead(benchmark::State& st) {
  const size_t bytes = size_t(512) << 20;
  std::vector<char> buf(size_t(4) << 20);
  write_file(false, bytes, std::vector<char>(size_t(4) << 20, 'y'));
  for (auto _ : st) {
    const int fd = ::open(bench_file().c_str(), O_RDONLY);
    size_t done = 0;
    for (long r; (r = ::read(fd, buf.data(), buf.size())) > 0;) done += static_cast<size_t>(r);
    ::close(fd);
    benchmark::DoNotOptimize(done);
  }
  st.SetBytesProcessed(int64_t(bytes) * st.iterations());
  std::filesystem::remove(bench_file());
}
BENCHMARK(BM_FileRead)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

void BM_FileReadInto(benchmark::State& st) {
  const size_t bytes = size_t(st.range(1)) << 20;
  const int nth = st.range(0) == 0 ? n_threads() : static_cast<int>(st.range(0));
  write_file(false, bytes, std::vector<char>(size_t(4) << 20, 'z'));
  std::vector<char> dst(bytes, 1);  // touched: no page faults inside the timing
  ThreadPool pool(nth);
  const int fd = ::open(bench_file().c_str(), O_RDONLY);
  {  // page-cache resident before timing
    std::vector<char> buf(size_t(4) << 20);
    while (::read(fd, buf.data(), buf.size()) > 0) {
    }
  }
  for (auto _ : st) {
    pool.run([&](int ith, int n) {
      int64_t b0, b1;
      split_range(int64_t(bytes), ith, n, int64_t(1) << 20, &b0, &b1);
      // 2 MiB per read(): few enough system calls that the copy is what is measured.
      for (int64_t o = b0; o < b1;) {
        const long r = ::pread(fd, dst.data() + o, static_cast<size_t>(std::min<int64_t>(int64_t(2) << 20, b1 - o)), o);
        if (r <= 0) break;
        o += r;
      }
    });
    benchmark::DoNotOptimize(dst.data());
  }
  ::close(fd);
  st.SetBytesProcessed(int64_t(bytes) * st.iterations());
  st.counters["threads"] = pool.n_threads();
  std::filesystem::remove(bench_file());
}
// {threads (0: all), MiB}: 88 MiB is a 4096-token f16 TinyLlama state file.
BENCHMARK(BM_FileReadInto)->Args({1, 88})->Args({0, 88})->Args({1, 512})->Args({0, 512})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace
}  // namespace kvstash

BENCHMARK_MAIN();
