// State save and restore next to recomputing the same prefill (issue 7): one row per
// (sequence length, cache type), -ctk = -ctv = type, printed as a markdown table (and JSON).
//
//   kvstash_state_bench [--tokens 1024,4096] [--types f32,f16,bf16,q8_0,q4_0,q8_KV] [--reps 5]
//                       [--threads 2] [--fill prefill|random] [--format 1.1|1.0] [--model PATH] [--dir DIR]
//                       [--json FILE]
//
// Per row, on one sequence of n tokens saved without logits:
//   cache bytes   rows the KvLayout holds for n tokens (layout.cell_bytes() x n)
//   file bytes    the state file; overhead = file - cache, checked against 0.1 % of cache + 4 KiB
//   save durable  state_save_seq_file with fsync of file and directory (the default), with the
//                 context's pool (StateSaveOptions::pool: rows hashed on a second thread)
//   save no-fsync the same without fsyncs; the file is fdatasync'ed after each timed save, untimed,
//                 so every save starts with no writeback in flight
//   restore       state_load_seq_file into an empty cache of n + 16 cells (free cells contiguous),
//                 file page-cache resident (one untimed restore reads it first); with 1 thread and
//                 with --threads threads (StateLoadOptions::pool)
//   recompute     wall time of the one prefill that filled the cache (n tokens in one eval on a
//                 fresh context with --threads threads): measured once per row, never extrapolated
//   ratio         recompute / restore (median, --threads threads)
//   bounds        measured in the same loop, each right before the operation it bounds, so that
//                 drift of the machine (shared or virtualised disks and memory) cancels out:
//                 save: the same bytes written from a 4 MiB buffer to a new file renamed over the
//                 previous one, with fdatasync for the durable save (machine_bench's
//                 BM_FileWriteRename); restore: the file read with pread into a destination as
//                 large as the file, by 1 thread and by --threads threads (BM_FileReadInto).
//                 "% bound" = bound median / operation median.
// Times are best and median of --reps runs; GB/s = file bytes / best time. "CPU ms": median
// process CPU time of the 1-thread restore (robust when other processes share the cores).
// --format 1.0 writes the files in state format 1.0 (cells as 16-byte CELL records instead of
// 1.1's CEL2 runs, docs/state-format.md §2.1): the overhead column as it was before 1.1.
// --fill random skips the prefill (rows are pseudo-random bytes; no recompute column): for quick
// save/restore runs. Without --model the TinyLlama-1.1B shape in Q8_0 is generated under
// $TMPDIR/kvstash-bench (KVSTASH_MODELS points at the vocab, default ../shared/models).
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "engine/context.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "state/state.h"

namespace kvstash {
namespace {

struct Options {
  std::vector<uint32_t> tokens = {1024, 4096};
  std::vector<DType> types = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV};
  int reps = 5;
  int threads = 2;
  bool prefill = true;
  uint16_t format_minor = 1;  // StateSaveOptions::format_minor
  std::string model;
  std::string dir;
  std::string json;
};

struct Timing {
  std::vector<double> ms;  // sorted
  double best() const { return ms.front(); }
  double median() const { return ms[ms.size() / 2]; }
};

struct Row {
  uint32_t n_tokens = 0;
  DType type = DType::F16;
  uint64_t cache_bytes = 0, file_bytes = 0;
  Timing save_durable, save_nofsync, restore_1, restore_n;
  Timing restore_1_cpu, restore_n_cpu;  // process CPU time (all threads) of the same restores
  Timing bound_durable, bound_nofsync, bound_read_1, bound_read_n;  // paired bounds (see the top)
  double recompute_s = -1;  // < 0: not measured (--fill random)
  uint64_t overhead() const { return file_bytes - cache_bytes; }
  uint64_t overhead_bound() const { return cache_bytes / 1000 + 4096; }
};

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "kvstash_state_bench: %s\n", m.c_str());
  std::exit(1);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

std::string env_or(const char* k, const std::string& d) {
  const char* e = std::getenv(k);
  return e && *e ? e : d;
}

Options parse(int argc, char** argv) {
  Options o;
  o.dir = (std::filesystem::temp_directory_path() / "kvstash-bench").string();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--tokens") {
      o.tokens.clear();
      for (const std::string& x : split(val())) {
        const long n = std::strtol(x.c_str(), nullptr, 10);
        if (n <= 0 || n > (1 << 20)) die("bad token count '" + x + "'");
        o.tokens.push_back(static_cast<uint32_t>(n));
      }
    } else if (a == "--types") {
      o.types.clear();
      for (const std::string& x : split(val())) {
        auto t = dtype_from_name(x);
        if (!t) die("unknown cache type '" + x + "'");
        o.types.push_back(*t);
      }
    } else if (a == "--reps" || a == "-r") {
      o.reps = std::atoi(val().c_str());
      if (o.reps < 1) die("--reps must be at least 1");
    } else if (a == "--threads" || a == "-t") {
      o.threads = std::atoi(val().c_str());
      if (o.threads < 1) die("--threads must be at least 1");
    } else if (a == "--fill") {
      const std::string f = val();
      if (f != "prefill" && f != "random") die("--fill is prefill or random");
      o.prefill = f == "prefill";
    } else if (a == "--format") {
      const std::string f = val();
      if (f != "1.0" && f != "1.1") die("--format is 1.1 or 1.0");
      o.format_minor = f == "1.0" ? 0 : 1;
    } else if (a == "--model" || a == "-m") {
      o.model = val();
    } else if (a == "--dir") {
      o.dir = val();
    } else if (a == "--json") {
      o.json = val();
    } else if (a == "--help" || a == "-h") {
      std::printf("usage: kvstash_state_bench [--tokens 1024,4096] [--types f32,f16,bf16,q8_0,q4_0,q8_KV] [--reps 5] [--threads 2]\n"
                  "                           [--fill prefill|random] [--format 1.1|1.0] [--model PATH] [--dir DIR] [--json FILE]\n");
      std::exit(0);
    } else {
      die("unknown option '" + a + "' (--help)");
    }
  }
  if (o.tokens.empty() || o.types.empty()) die("--tokens and --types need at least one value");
  return o;
}

std::string default_model(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "tinyllama-1.1b-q8_0.gguf").string();
  if (std::filesystem::exists(path)) return path;
  ModelGenSpec s = model_gen_preset("tinyllama-1.1b").value();
  s.type = DType::Q8_0;
  s.vocab_path = env_or("KVSTASH_MODELS", "../shared/models") + "/ggml-vocab-llama-spm.gguf";
  std::fprintf(stderr, "generating %s ...\n", path.c_str());
  if (Status st = model_gen_write(s, path); !st.is_ok()) die(st.to_string());
  return path;
}

double now_ms() { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double cpu_ms() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

void finish(Timing* t) { std::sort(t->ms.begin(), t->ms.end()); }

void fdatasync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0 || ::fdatasync(fd) != 0) die("cannot fdatasync " + path);
  ::close(fd);
}

// Bound of a save: `bytes` written from `buf` to a new file renamed over `path` (+ fdatasync).
double bound_write_ms(const std::string& path, uint64_t bytes, bool durable, const std::vector<char>& buf) {
  const std::string tmp = path + ".tmp";
  const double t0 = now_ms();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("cannot create " + tmp);
  for (uint64_t done = 0; done < bytes;) {
    const ssize_t w = ::write(fd, buf.data(), std::min<uint64_t>(buf.size(), bytes - done));
    if (w <= 0) die("cannot write " + tmp);
    done += uint64_t(w);
  }
  if (durable && ::fdatasync(fd) != 0) die("cannot fdatasync " + tmp);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) die("cannot rename " + tmp);
  const double ms = now_ms() - t0;
  if (!durable) fdatasync_file(path);  // untimed, as after the no-fsync saves
  return ms;
}

// Bound of a restore: the file read with pread into dst (as large as the file), split over the
// pool's threads in 4 MiB-aligned shares (1 thread without a pool).
double bound_read_ms(const std::string& path, uint64_t bytes, ThreadPool* pool, uint8_t* dst) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) die("cannot open " + path);
  auto job = [&](int ith, int nth) {
    int64_t b0, b1;
    split_range(int64_t(bytes), ith, nth, int64_t(4) << 20, &b0, &b1);
    for (int64_t off = b0; off < b1;) {
      const ssize_t r = ::pread(fd, dst + off, size_t(std::min<int64_t>(b1 - off, int64_t(4) << 20)), off);
      if (r <= 0) die("cannot read " + path);
      off += r;
    }
  };
  const double t0 = now_ms();
  if (pool) pool->run(job);
  else job(0, 1);
  const double ms = now_ms() - t0;
  ::close(fd);
  return ms;
}

// Fills cells [0, n) of sequence 0 with pseudo-random rows (splitmix64).
void fill_random(KvCache& cache, uint32_t n) {
  uint64_t x = 0x9e3779b97f4a7c15ull;
  const KvLayout& L = cache.layout();
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
      uint8_t* p = cache.row(il, si, 0);
      const size_t bytes = L.layer(il).streams[si].row_bytes * n;
      for (size_t i = 0; i < bytes; i += 8) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        std::memcpy(p + i, &z, std::min<size_t>(8, bytes - i));
      }
    }
  for (uint32_t c = 0; c < n; ++c) cache.cell_assign(c, static_cast<int32_t>(c), 0, static_cast<int32_t>(3 + c % 1000));
}

Row run_row(const Model& model, uint32_t n, DType type, const Options& o) {
  Row row;
  row.n_tokens = n;
  row.type = type;
  const std::string what = std::to_string(n) + " tokens, " + dtype_name(type);
  ContextParams cp;
  cp.n_ctx = n + 16;
  cp.n_threads = o.threads;
  cp.type_k = cp.type_v = type;
  auto c = Context::create(model, cp);
  if (!c.is_ok()) die(what + ": " + c.status().to_string());
  Context& ctx = **c;
  if (o.prefill) {
    std::vector<int32_t> prompt(n);
    const int32_t nv = static_cast<int32_t>(model.hparams().n_vocab);
    for (uint32_t i = 0; i < n; ++i) prompt[i] = 3 + static_cast<int32_t>((i * 7919u) % uint32_t(nv - 3));
    const double t0 = now_ms();
    auto r = ctx.eval(0, prompt.data(), static_cast<int32_t>(n), 0);
    row.recompute_s = (now_ms() - t0) / 1e3;
    if (!r.is_ok()) die(what + ": prefill: " + r.status().to_string());
    std::fprintf(stderr, "%s: prefill %.2f s\n", what.c_str(), row.recompute_s);
  } else {
    fill_random(ctx.cache(), n);
  }
  row.cache_bytes = uint64_t(ctx.cache().layout().cell_bytes()) * n;
  const std::string path = (std::filesystem::path(o.dir) / ("kvstash-state-bench-" + std::to_string(n) + "-" + dtype_name(type) + ".state")).string();
  const ModelFingerprint& fp = model.fingerprint();

  const std::string bound_path = path + ".bound";
  const std::vector<char> wbuf(size_t(4) << 20, 'b');
  for (bool durable : {true, false}) {
    Timing& t = durable ? row.save_durable : row.save_nofsync;
    Timing& tb = durable ? row.bound_durable : row.bound_nofsync;
    StateSaveOptions so;
    so.durable = durable;
    so.format_minor = o.format_minor;
    so.pool = &ctx.pool();  // hashes on a second thread while the first writes
    for (int i = 0; i < o.reps; ++i) {
      tb.ms.push_back(bound_write_ms(bound_path, row.file_bytes ? row.file_bytes : row.cache_bytes, durable, wbuf));
      const double t0 = now_ms();
      auto r = state_save_seq_file(ctx.cache(), 0, fp, path, so);
      t.ms.push_back(now_ms() - t0);
      if (!r.is_ok()) die(what + ": save: " + r.status().to_string());
      row.file_bytes = r->n_bytes;
      if (!durable) fdatasync_file(path);
    }
    finish(&t);
    finish(&tb);
  }
  std::filesystem::remove(bound_path);

  auto target_layout = model.kv_layout(n + 16, type, type);
  if (!target_layout.is_ok()) die(what + ": " + target_layout.status().to_string());
  KvCache target(std::move(target_layout).value());
  std::vector<uint8_t> rbuf(row.file_bytes, 1);  // the read bound's destination, touched
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &ctx.pool()}) {  // the context's pool, as the engine would pass it
    Timing& t = p ? row.restore_n : row.restore_1;
    Timing& tb = p ? row.bound_read_n : row.bound_read_1;
    StateLoadOptions lo;
    lo.pool = p;
    for (int i = -1; i < o.reps; ++i) {  // i = -1: untimed, reads the file into the page cache
      const double bound = bound_read_ms(path, row.file_bytes, p, rbuf.data());
      if (i >= 0) tb.ms.push_back(bound);
      target.clear();
      const double c0 = cpu_ms(), t0 = now_ms();
      auto r = state_load_seq_file(target, 0, fp, path, lo);
      const double wall = now_ms() - t0, cpu = cpu_ms() - c0;
      if (!r.is_ok()) die(what + ": restore: " + r.status().to_string());
      if (r->n_tokens != n) die(what + ": restore gave " + std::to_string(r->n_tokens) + " tokens");
      if (i < 0) continue;
      t.ms.push_back(wall);
      (p ? row.restore_n_cpu : row.restore_1_cpu).ms.push_back(cpu);
    }
    finish(&t);
    finish(&tb);
  }
  finish(&row.restore_1_cpu);
  finish(&row.restore_n_cpu);
  // The restored rows are the saved ones (a bench that measured a broken restore would be worse than none).
  const KvLayout& L = ctx.cache().layout();
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si)
      if (std::memcmp(ctx.cache().row(il, si, 0), target.row(il, si, 0), L.layer(il).streams[si].row_bytes * n) != 0)
        die(what + ": restored rows differ from the saved ones (layer " + std::to_string(il) + ")");
  std::filesystem::remove(path);
  return row;
}

double gbps(uint64_t bytes, double ms) { return bytes / (ms * 1e6); }

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string ms_cell(const Timing& t) { return fmt("%.1f", t.best()) + " / " + fmt("%.1f", t.median()); }

// The operation's speed as a share of its paired bound's (medians).
std::string pct_of_bound(const Timing& op, const Timing& bound) { return fmt("%.0f %%", 100.0 * bound.median() / op.median()); }

void print_markdown(const std::vector<Row>& rows, const Options& o) {
  std::printf("| tokens | type | cache MB | file MB | overhead | <= 0.1 %% + 4 KiB | save durable ms | GB/s | %% bound | save no-fsync ms | GB/s | %% bound "
              "| restore 1 thr ms | GB/s | %% bound | CPU ms | restore %d thr ms | GB/s | %% bound | recompute s | recompute / restore |\n",
              o.threads);
  std::printf("|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    const double pct = 100.0 * double(r.overhead()) / double(r.cache_bytes);
    std::printf("| %u | %s | %.3f | %.3f | %llu B (%.3f %%) | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %.2f | %s | %.1f | %s | %.2f | %s | %s | %s |\n",
                r.n_tokens, dtype_name(r.type), r.cache_bytes / 1e6, r.file_bytes / 1e6, static_cast<unsigned long long>(r.overhead()), pct,
                r.overhead() <= r.overhead_bound() ? "yes" : ("**no** (bound " + std::to_string(r.overhead_bound()) + " B)").c_str(),
                ms_cell(r.save_durable).c_str(), gbps(r.file_bytes, r.save_durable.best()), pct_of_bound(r.save_durable, r.bound_durable).c_str(),
                ms_cell(r.save_nofsync).c_str(), gbps(r.file_bytes, r.save_nofsync.best()), pct_of_bound(r.save_nofsync, r.bound_nofsync).c_str(),
                ms_cell(r.restore_1).c_str(), gbps(r.file_bytes, r.restore_1.best()), pct_of_bound(r.restore_1, r.bound_read_1).c_str(),
                r.restore_1_cpu.median(), ms_cell(r.restore_n).c_str(), gbps(r.file_bytes, r.restore_n.best()),
                pct_of_bound(r.restore_n, r.bound_read_n).c_str(),
                r.recompute_s < 0 ? "not measured" : fmt("%.1f", r.recompute_s).c_str(),
                r.recompute_s < 0 ? "-" : (fmt("%.0f", r.recompute_s * 1e3 / r.restore_n.median()) + "x").c_str());
  }
}

std::string json_array(const Timing& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.ms.size(); ++i) s += (i ? ", " : "") + fmt("%.3f", t.ms[i]);
  return s + "]";
}

void write_json(const std::vector<Row>& rows, const Options& o, const std::string& model_path, const std::string& load_before,
                const std::string& load_after) {
  std::ofstream f(o.json);
  if (!f) die("cannot write " + o.json);
  f << "{\n  \"commit\": \"" << KVSTASH_COMMIT << "\",\n  \"cpu\": \"" << cpu_model() << "\",\n  \"compiler\": \"" << __VERSION__
    << "\",\n  \"flags\": \"" << KVSTASH_BUILD_FLAGS << "\",\n  \"model\": \"" << model_path << "\",\n  \"threads\": " << o.threads
    << ",\n  \"reps\": " << o.reps << ",\n  \"fill\": \"" << (o.prefill ? "prefill" : "random") << "\",\n  \"state_format\": \"1." << o.format_minor << "\",\n  \"loadavg_before\": \""
    << load_before << "\",\n  \"loadavg_after\": \"" << load_after << "\",\n  \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    f << "    {\"tokens\": " << r.n_tokens << ", \"type\": \"" << dtype_name(r.type) << "\", \"cache_bytes\": " << r.cache_bytes
      << ", \"file_bytes\": " << r.file_bytes << ", \"overhead_bytes\": " << r.overhead() << ", \"overhead_bound_bytes\": " << r.overhead_bound()
      << ", \"save_durable_ms\": " << json_array(r.save_durable) << ", \"save_nofsync_ms\": " << json_array(r.save_nofsync)
      << ", \"restore_1thread_ms\": " << json_array(r.restore_1) << ", \"restore_threads_ms\": " << json_array(r.restore_n)
      << ", \"restore_1thread_cpu_ms\": " << json_array(r.restore_1_cpu) << ", \"restore_threads_cpu_ms\": " << json_array(r.restore_n_cpu)
      << ", \"bound_write_durable_ms\": " << json_array(r.bound_durable) << ", \"bound_write_nofsync_ms\": " << json_array(r.bound_nofsync)
      << ", \"bound_read_1thread_ms\": " << json_array(r.bound_read_1) << ", \"bound_read_threads_ms\": " << json_array(r.bound_read_n) << ", \"recompute_s\": ";
    if (r.recompute_s < 0) f << "null";
    else f << fmt("%.3f", r.recompute_s);
    f << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
  }
  f << "  ]\n}\n";
}

}  // namespace
}  // namespace kvstash

int main(int argc, char** argv) {
  using namespace kvstash;
  const Options o = parse(argc, argv);
  std::filesystem::create_directories(o.dir);
  const std::string model_path = !o.model.empty() ? o.model : env_or("KVSTASH_BENCH_MODEL", "").empty() ? default_model(o.dir) : env_or("KVSTASH_BENCH_MODEL", "");
  auto m = Model::load(model_path);
  if (!m.is_ok()) die(m.status().to_string());
  const std::string load_before = loadavg();
  std::vector<Row> rows;
  for (uint32_t n : o.tokens)
    for (DType t : o.types) rows.push_back(run_row(**m, n, t, o));
  const std::string load_after = loadavg();
  std::printf("kvstash %s (%s), %s, %s, %s; model %s; %d threads; %d reps; fill %s; state format 1.%u; load average %s before, %s after\n\n",
              KVSTASH_VERSION, KVSTASH_COMMIT, cpu_model().c_str(), __VERSION__, KVSTASH_BUILD_FLAGS, model_path.c_str(), o.threads, o.reps,
              o.prefill ? "prefill" : "random", unsigned(o.format_minor), load_before.c_str(), load_after.c_str());
  print_markdown(rows, o);
  if (!o.json.empty()) write_json(rows, o, model_path, load_before, load_after);
  return 0;
}
