// `kvstash bench`: prompt-processing and generation throughput, modelled on llama-bench.
// pp: the prompt is evaluated as one batch (split in -ub micro-batches) into an empty cache.
// tg: n tokens are generated one at a time from an empty cache, as llama-bench's tgN does.
// Each test runs once as a warm-up, then -r times; tok/s is reported as mean and sd.
// Decode also reports GB/s (weight bytes read per token x tok/s) and, unless --no-roof, that as a
// share of the machine's read bandwidth, measured (core/membw.h, best of 2 passes over --roof-mib, default 1 GiB, with
// the same threads) right before each repetition: on a shared or virtualised machine the
// bandwidth drifts by tens of percent from minute to minute, so only a paired roof makes the
// ratio meaningful.
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/membw.h"
#include "engine/context.h"
#include "model/model.h"

namespace kvstash::cli {

void add_bench_command(CLI::App& app, BenchOptions& o) {
  auto* c = app.add_subcommand("bench", "Measure prompt processing and generation speed (like llama-bench)");
  c->add_option("-m,--model", o.models, "GGUF model file(s)")->required();
  c->add_option("-p,--n-prompt", o.n_prompt, "Prompt sizes (comma list); 0 skips")->delimiter(',');
  c->add_option("-n,--n-gen", o.n_gen, "Generation lengths (comma list); 0 skips")->delimiter(',');
  c->add_option("-t,--threads", o.threads, "Thread counts (comma list)")->delimiter(',');
  c->add_option("-r,--repetitions", o.reps, "Repetitions of each test");
  c->add_option("-b,--batch-size", o.n_batch, "Logical batch size");
  c->add_option("--ubatch-size", o.n_ubatch, "Physical batch size (-ub)");
  c->add_option("--cache-type-k", o.type_k, "K cache type (-ctk)");
  c->add_option("--cache-type-v", o.type_v, "V cache type (-ctv)");
  c->add_option("--attn", o.attn, "Attention path: 'default'; deepseek2 (MLA) also 'absorbed' (its default) or 'naive'");
  c->add_option("-o,--output", o.format, "Output format: md or json");
  c->add_flag("!--no-roof", o.roof, "Decode: skip measuring the memory read bandwidth before each repetition");
  c->add_option("--roof-mib", o.roof_mib, "Size of the read-bandwidth probe's buffer in MiB (well beyond the last-level cache)")
      ->check(CLI::Range(1, 1 << 20));
}

namespace {

struct Sample {
  std::vector<double> ns;
};

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); }
double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / (v.size() - 1));
}

}  // namespace

int bench_command(const BenchOptions& o) {
  auto tk = dtype_from_name(o.type_k), tv = dtype_from_name(o.type_v);
  if (!tk || !tv) {
    std::fprintf(stderr, "error: bench: unknown cache type\n");
    return 1;
  }
  if (o.attn != "default" && o.attn != "absorbed" && o.attn != "naive") {
    std::fprintf(stderr, "error: bench: unknown attention path '%s' (default; MLA models: absorbed, naive)\n", o.attn.c_str());
    return 1;
  }
  if (o.reps < 1 || o.reps > 1000) {
    std::fprintf(stderr, "error: bench: -r must be 1..1000\n");
    return 1;
  }
  const bool json = o.format == "json";
  nlohmann::json results = nlohmann::json::array();
  struct utsname un;
  uname(&un);
  const std::string cpu = cpu_model();
  if (!json) {
    std::printf("kvstash %s (%s), %s, kernels %s, %s %s\n\n", KVSTASH_VERSION, KVSTASH_COMMIT, cpu.c_str(), active_kernels().name, un.sysname, un.release);
    std::printf("| model | size | params | threads | type_k | type_v | test | t/s | GB/s |%s\n", o.roof ? " roof GB/s | % roof |" : "");
    std::printf("| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |%s\n", o.roof ? " ---: | ---: |" : "");
  }
  std::unique_ptr<MemReadProbe> probe;  // made at the first decode test, kept across tests
  for (const std::string& path : o.models) {
    auto m = Model::load(path);
    if (!m.is_ok()) {
      std::fprintf(stderr, "error: %s\n", m.status().to_string().c_str());
      return 1;
    }
    const Model& model = **m;
    if (o.attn != "default" && model.arch() != Arch::Deepseek2) {
      std::fprintf(stderr, "error: bench: attention path '%s' needs an MLA model; %s has one path: default\n", o.attn.c_str(), path.c_str());
      return 1;
    }
    const DType wtype = model.arch() == Arch::Deepseek2 ? model.ds2_layers()[0].wkv_a.type : model.layers()[0].wq.type;
    std::string mtype = model.name() + " " + (model.tok_embd().type == wtype ? dtype_name(wtype) : "mixed");
    for (int threads_opt : o.threads) {
      const int threads = threads_opt > 0 ? threads_opt : ThreadPool::default_threads();
      struct Test {
        int n_prompt, n_gen;
      };
      std::vector<Test> tests;
      for (int p : o.n_prompt)
        if (p > 0) tests.push_back({p, 0});
      for (int g : o.n_gen)
        if (g > 0) tests.push_back({0, g});
      for (const Test& t : tests) {
        ContextParams cp;
        cp.n_ctx = static_cast<uint32_t>(std::max(t.n_prompt, t.n_gen) + 16);
        cp.n_batch = std::max(o.n_batch, 1);
        cp.n_ubatch = o.n_ubatch;
        cp.n_threads = threads;
        cp.type_k = *tk;
        cp.type_v = *tv;
        cp.mla_path = o.attn == "naive" ? MlaPath::Naive : MlaPath::Absorbed;
        auto c = Context::create(model, cp);
        if (!c.is_ok()) {
          std::fprintf(stderr, "error: %s\n", c.status().to_string().c_str());
          return 1;
        }
        Context& ctx = **c;
        const int32_t nv = static_cast<int32_t>(model.hparams().n_vocab);
        std::vector<int32_t> toks(std::max(t.n_prompt, t.n_gen));
        for (size_t i = 0; i < toks.size(); ++i) toks[i] = 3 + static_cast<int32_t>((i * 7919) % (nv - 3));
        std::vector<double> ns, roofs;
        const bool roof = o.roof && t.n_gen > 0;
        if (roof && !probe) {
          probe = std::make_unique<MemReadProbe>(ctx.pool(), size_t(o.roof_mib) << 20);
          if (!probe->ok()) {
            std::fprintf(stderr, "error: bench: cannot allocate the %d MiB read-bandwidth probe (use --no-roof or a smaller --roof-mib)\n", o.roof_mib);
            return 1;
          }
        }
        for (int rep = -1; rep < o.reps; ++rep) {  // rep -1: warm-up
          ctx.cache().clear();
          if (roof && rep >= 0) roofs.push_back(std::max(probe->measure(ctx.pool()), probe->measure(ctx.pool())));
          const auto t0 = std::chrono::steady_clock::now();
          if (t.n_prompt > 0) {
            auto r = ctx.eval(0, toks.data(), t.n_prompt, 0);
            if (!r.is_ok()) {
              std::fprintf(stderr, "error: %s\n", r.status().to_string().c_str());
              return 1;
            }
          } else {
            for (int i = 0; i < t.n_gen; ++i) {
              auto r = ctx.eval(0, &toks[i], 1, i);
              if (!r.is_ok()) {
                std::fprintf(stderr, "error: %s\n", r.status().to_string().c_str());
                return 1;
              }
            }
          }
          const double el = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
          if (rep >= 0) ns.push_back(el);
        }
        const int n = t.n_prompt + t.n_gen;
        std::vector<double> ts;
        for (double x : ns) ts.push_back(n * 1e9 / x);
        const double gbs = t.n_gen > 0 ? mean(ts) * model.weight_bytes_per_token() / 1e9 : 0.0;
        std::vector<double> pct;  // per repetition: decode bytes/s over the roof measured just before
        for (size_t i = 0; i < roofs.size(); ++i) pct.push_back(100.0 * ts[i] * model.weight_bytes_per_token() / roofs[i]);
        const std::string test = t.n_prompt > 0 ? "pp" + std::to_string(t.n_prompt) : "tg" + std::to_string(t.n_gen);
        if (json) {
          nlohmann::json j;
          j["build_commit"] = KVSTASH_COMMIT;
          j["build_number"] = 0;
          j["cpu_info"] = cpu;
          j["gpu_info"] = "";
          j["backends"] = std::string("CPU (") + active_kernels().name + ")";
          j["model_filename"] = path;
          j["model_type"] = mtype;
          j["model_size"] = model.weight_bytes();
          j["model_n_params"] = model.n_params();
          j["n_batch"] = cp.n_batch;
          j["n_ubatch"] = ctx.params().n_ubatch;
          j["n_threads"] = threads;
          j["type_k"] = o.type_k;
          j["type_v"] = o.type_v;
          j["attn_path"] = o.attn;
          j["n_prompt"] = t.n_prompt;
          j["n_gen"] = t.n_gen;
          j["avg_ns"] = static_cast<uint64_t>(mean(ns));
          j["stddev_ns"] = static_cast<uint64_t>(stddev(ns));
          j["avg_ts"] = mean(ts);
          j["stddev_ts"] = stddev(ts);
          j["samples_ns"] = ns;
          j["samples_ts"] = ts;
          if (t.n_gen > 0) j["decode_GBps"] = gbs;
          if (!roofs.empty()) {
            j["mem_read_GBps"] = mean(roofs) / 1e9;
            std::vector<double> gb;
            for (double r : roofs) gb.push_back(r / 1e9);
            j["samples_mem_read_GBps"] = gb;
            j["decode_roof_pct"] = mean(pct);
            j["stddev_decode_roof_pct"] = stddev(pct);
          }
          results.push_back(j);
        } else {
          char g[32] = "", r[64] = "";
          if (t.n_gen > 0) std::snprintf(g, sizeof g, "%.2f", gbs);
          if (!roofs.empty()) std::snprintf(r, sizeof r, " %.2f | %.1f ± %.1f |", mean(roofs) / 1e9, mean(pct), stddev(pct));
          else if (o.roof) std::snprintf(r, sizeof r, "  |  |");
          std::printf("| %s | %.2f GiB | %.2f B | %d | %s | %s | %s | %.2f ± %.2f | %s |%s\n", mtype.c_str(), model.weight_bytes() / 1073741824.0,
                      model.n_params() / 1e9, threads, o.type_k.c_str(), o.type_v.c_str(), test.c_str(), mean(ts), stddev(ts), g, r);
          std::fflush(stdout);
        }
      }
    }
  }
  if (json) std::printf("%s\n", results.dump(2).c_str());
  return 0;
}

}  // namespace kvstash::cli
