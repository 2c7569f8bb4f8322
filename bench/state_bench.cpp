// State save/restore throughput next to the cost of recomputing the same prefill.
//   KVSTASH_BENCH_MODEL   model (default: generates the TinyLlama-1.1B shape in Q8_0 under $TMPDIR)
//   KVSTASH_BENCH_TOKENS  comma list of sequence lengths (default 4096)
//   KVSTASH_BENCH_TYPES   comma list of cache types (default f16)
//   KVSTASH_BENCH_DIR     where files are written (default $TMPDIR)
// Prefill is timed once per (length, type) and reported as counters beside each save/restore.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>

#include "engine/context.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "state/state.h"

namespace kvstash {
namespace {

std::string env_or(const char* k, const std::string& d) {
  const char* e = std::getenv(k);
  return e && *e ? e : d;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

struct Setup {
  std::unique_ptr<Model> model;
  std::unique_ptr<Context> ctx;
  int32_t n_tokens;
  double prefill_s;
  std::string path;
};

std::vector<std::unique_ptr<Setup>> g_setups;

std::string bench_model() {
  std::string m = env_or("KVSTASH_BENCH_MODEL", "");
  if (!m.empty()) return m;
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "kvstash-bench";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "tinyllama-1.1b-q8_0.gguf").string();
  if (!std::filesystem::exists(path)) {
    auto spec = model_gen_preset("tinyllama-1.1b");
    ModelGenSpec s = spec.value();
    s.type = DType::Q8_0;
    s.vocab_path = env_or("KVSTASH_MODELS", "../shared/models") + "/ggml-vocab-llama-spm.gguf";
    std::fprintf(stderr, "generating %s ...\n", path.c_str());
    Status st = model_gen_write(s, path);
    if (!st.is_ok()) {
      std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
      std::exit(1);
    }
  }
  return path;
}

void BM_Save(benchmark::State& state, Setup* s, bool durable) {
  StateSaveOptions so;
  so.durable = durable;
  uint64_t bytes = 0;
  for (auto _ : state) {
    auto r = state_save_seq_file(s->ctx->cache(), 0, s->model->fingerprint(), s->path, so);
    if (!r.is_ok()) {
      state.SkipWithError(r.status().to_string().c_str());
      break;
    }
    bytes = r->n_bytes;
  }
  state.SetBytesProcessed(int64_t(bytes) * state.iterations());
  state.counters["file_MB"] = bytes / 1e6;
  state.counters["prefill_s"] = s->prefill_s;
  state.counters["tokens"] = s->n_tokens;
}

void BM_Restore(benchmark::State& state, Setup* s) {
  uint64_t bytes = 0;
  double total_s = 0;
  for (auto _ : state) {
    s->ctx->cache().seq_rm(1, -1, -1);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = state_load_seq_file(s->ctx->cache(), 1, s->model->fingerprint(), s->path, StateLoadOptions{});
    total_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!r.is_ok()) {
      state.SkipWithError(r.status().to_string().c_str());
      break;
    }
    bytes = r->n_bytes;
  }
  state.SetBytesProcessed(int64_t(bytes) * state.iterations());
  state.counters["prefill_s"] = s->prefill_s;
  state.counters["speedup_vs_prefill"] = s->prefill_s / (total_s / std::max<int64_t>(1, state.iterations()));
  state.counters["tokens"] = s->n_tokens;
}

}  // namespace
}  // namespace kvstash

int main(int argc, char** argv) {
  using namespace kvstash;
  benchmark::Initialize(&argc, argv);
  const std::string model_path = bench_model();
  const std::string dir = env_or("KVSTASH_BENCH_DIR", std::filesystem::temp_directory_path().string());
  for (const std::string& tname : split(env_or("KVSTASH_BENCH_TYPES", "f16"))) {
    auto t = dtype_from_name(tname);
    if (!t) {
      std::fprintf(stderr, "unknown cache type %s\n", tname.c_str());
      return 1;
    }
    for (const std::string& ns : split(env_or("KVSTASH_BENCH_TOKENS", "4096"))) {
      auto s = std::make_unique<Setup>();
      s->n_tokens = std::stoi(ns);
      auto m = Model::load(model_path);
      if (!m.is_ok()) {
        std::fprintf(stderr, "error: %s\n", m.status().to_string().c_str());
        return 1;
      }
      s->model = std::move(m).value();
      ContextParams cp;
      cp.n_ctx = static_cast<uint32_t>(2 * s->n_tokens + 16);
      cp.type_k = cp.type_v = *t;
      auto c = Context::create(*s->model, cp);
      if (!c.is_ok()) {
        std::fprintf(stderr, "error: %s\n", c.status().to_string().c_str());
        return 1;
      }
      s->ctx = std::move(c).value();
      std::vector<int32_t> prompt(s->n_tokens);
      for (int i = 0; i < s->n_tokens; ++i) prompt[i] = 3 + (i * 7919) % (int32_t(s->model->hparams().n_vocab) - 3);
      const auto t0 = std::chrono::steady_clock::now();
      auto r = s->ctx->eval(0, prompt.data(), s->n_tokens, 0);
      s->prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!r.is_ok()) {
        std::fprintf(stderr, "error: %s\n", r.status().to_string().c_str());
        return 1;
      }
      std::fprintf(stderr, "prefill of %d tokens (%s cache): %.2f s\n", s->n_tokens, tname.c_str(), s->prefill_s);
      s->path = dir + "/kvstash-bench-" + tname + "-" + ns + ".state";
      Setup* sp = s.get();
      g_setups.push_back(std::move(s));
      const std::string suffix = "/" + tname + "/" + ns;
      benchmark::RegisterBenchmark(("state_save_durable" + suffix).c_str(), [sp](benchmark::State& st) { BM_Save(st, sp, true); })
          ->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
      benchmark::RegisterBenchmark(("state_save_nofsync" + suffix).c_str(), [sp](benchmark::State& st) { BM_Save(st, sp, false); })
          ->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
      benchmark::RegisterBenchmark(("state_restore" + suffix).c_str(), [sp](benchmark::State& st) { BM_Restore(st, sp); })
          ->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  for (auto& s : g_setups) std::filesystem::remove(s->path);
  return 0;
}
