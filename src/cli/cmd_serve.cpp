// `kvstash serve`: the llama.cpp-compatible HTTP server (llama-server's flags).
// Order of start-up: bind and listen (every endpoint answers 503 "Loading model"), load the
// model with a progress bar (plain lines when stderr is not a terminal), then serve.
// SIGINT/SIGTERM: stop taking requests, drain the in-flight ones, exit 0; a second signal
// exits at once.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "engine/context.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "server/http_server.h"
#include "state/fault_io.h"

namespace kvstash::cli {

void add_serve_command(CLI::App& app, ServeOptions& o) {
  ServerOptions& s = o.server;
  auto* c = app.add_subcommand("serve", "Serve the llama.cpp-compatible HTTP API (see docs/api.md)");
  c->add_option("-m,--model", s.model_path, "GGUF model file")->required();
  c->add_option("-a,--alias", s.alias, "Model name in responses (default: the model path)");
  c->add_option("--host", s.host, "Address to listen on");
  c->add_option("--port", s.port, "Port to listen on (0: any free port)");
  c->add_option("-c,--ctx-size", s.n_ctx, "KV cache cells shared by all slots (default: min(training context, 4096))");
  c->add_option("--parallel", s.n_parallel, "Slots (-np); each slot gets ctx-size / parallel tokens");
  c->add_option("-t,--threads", s.n_threads, "Compute threads (default: all CPUs)");
  c->add_option("-b,--batch-size", s.n_batch, "Tokens per batched step");
  c->add_option("--ubatch-size", s.n_ubatch, "Tokens per forward pass (-ub)");
  c->add_option("--cache-type-k", s.cache_type_k, "K cache type (-ctk): f32, f16, bf16, q8_0, q4_0, q8_KV");
  c->add_option("--cache-type-v", s.cache_type_v, "V cache type (-ctv): f32, f16, bf16, q8_0, q4_0, q8_KV");
  c->add_option("--slot-save-path", s.slot_save_path, "Directory for slot save/restore (without it: 501)");
  c->add_option("--api-key", o.api_key, "API keys, comma separated (default: $LLAMA_API_KEY)");
  c->add_option("--api-key-file", o.api_key_file, "File with one API key per line ('#' starts a comment)");
  c->add_option("-s,--seed", s.seed, "Default request seed (default: random per request)");
  c->add_option("-n,--n-predict", s.n_predict, "Default n_predict of requests (-1: until end of generation or context)");
  c->add_flag("--metrics", s.metrics, "Enable GET /metrics (Prometheus)");
  c->add_flag("--no-slots", s.no_slots, "Disable GET /slots");
  c->add_flag("--slots", o.slots_flag, "Enable GET /slots (the default)");
  c->add_option("--chat-template", s.chat_template, "Chat format: chatml, llama2, llama3, deepseek, deepseek2, deepseek3, mistral-v1, mistral-v3, mistral-v7, gemma, zephyr");
  c->add_option("--max-body-size", s.max_body_bytes, "Largest request body in bytes");
  c->add_option("--slot-wait-ms", s.slot_wait_ms, "How long save/restore/erase wait for a busy slot");
  c->add_option("--threads-http", s.threads_http, "HTTP worker threads (default: max(32, 4 * parallel + 8))");
  c->add_flag("--slot-save-no-fsync", s.slot_save_no_fsync, "Slot saves stay atomic but skip fsync");
}

namespace {

// Progress on stderr: a bar redrawn in place on a terminal, a few plain lines otherwise.
class LoadProgress {
 public:
  LoadProgress() : tty_(::isatty(STDERR_FILENO) == 1) {}
  void begin(const std::string& stage) {
    stage_ = stage;
    last_ = -1;
    if (!tty_) std::fprintf(stderr, "load: %s ...\n", stage.c_str());
    update(0.0);
  }
  void update(double frac) {
    const int pct = static_cast<int>(frac * 100.0);
    if (pct == last_) return;
    last_ = pct;
    if (tty_) {
      const int w = 30, fill = pct * w / 100;
      std::fprintf(stderr, "\r[%s%s] %3d%% %s", std::string(size_t(fill), '#').c_str(), std::string(size_t(w - fill), '.').c_str(), pct,
                   stage_.c_str());
      std::fflush(stderr);
    } else if (pct > 0 && pct % 25 == 0 && pct < 100) {
      std::fprintf(stderr, "load: %s %d%%\n", stage_.c_str(), pct);
    }
  }
  void end(const std::string& detail) {
    if (tty_) std::fprintf(stderr, "\r[%s] 100%% %s: %s\n", std::string(30, '#').c_str(), stage_.c_str(), detail.c_str());
    else std::fprintf(stderr, "load: %s done: %s\n", stage_.c_str(), detail.c_str());
  }

 private:
  bool tty_;
  std::string stage_;
  int last_ = -1;
};

double secs_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Reads every page of the weights once, so that the first requests do not stall on page faults.
void prefetch_weights(const Model& m, LoadProgress& p) {
  const uint64_t total = std::max<uint64_t>(m.weight_bytes(), 1);
  uint64_t done = 0;
  volatile uint8_t sink = 0;
  uint8_t acc = 0;
  for (const auto& t : m.gguf().tensors()) {
    for (uint64_t off = 0; off < t.n_bytes; off += 4096) {
      acc ^= t.data[off];
      if ((off & ((uint64_t(1) << 24) - 1)) == 0) p.update(double(done + off) / double(total));
    }
    done += t.n_bytes;
    p.update(double(done) / double(total));
  }
  sink = acc;
  (void)sink;
}

Status read_key_file(const std::string& path, std::vector<std::string>* keys) {
  std::ifstream f(path);
  if (!f) return io_error("--api-key-file: cannot read '" + path + "'");
  std::string line;
  while (std::getline(f, line)) {
    if (const size_t h = line.find('#'); h != std::string::npos) line.erase(h);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t b = 0;
    while (b < line.size() && std::isspace(static_cast<unsigned char>(line[b]))) ++b;
    if (b < line.size()) keys->push_back(line.substr(b));
  }
  return Status::ok();
}

void split_keys(const std::string& s, std::vector<std::string>* keys) {
  std::stringstream ss(s);
  std::string k;
  while (std::getline(ss, k, ','))
    if (!k.empty()) keys->push_back(k);
}

int fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
  return 1;
}

// Signals are blocked in every thread and taken here, synchronously.
struct SignalWaiter {
  std::mutex mu;
  std::condition_variable cv;
  int signo = 0;
  std::atomic<bool> serving{false};
};

}  // namespace

int serve_command(ServeOptions& o) {
  ServerOptions& opt = o.server;
  if (!o.api_key.empty()) split_keys(o.api_key, &opt.api_keys);
  else if (const char* e = std::getenv("LLAMA_API_KEY"); e && *e) split_keys(e, &opt.api_keys);
  if (!o.api_key_file.empty())
    if (Status s = read_key_file(o.api_key_file, &opt.api_keys); !s.is_ok()) return fail(s);
  auto tk = dtype_from_name(opt.cache_type_k), tv = dtype_from_name(opt.cache_type_v);
  if (!tk || !tv) return fail(invalid_argument("serve: unknown cache type '" + (tk ? opt.cache_type_v : opt.cache_type_k) + "'"));
  if (opt.n_parallel < 1) return fail(invalid_argument("serve: --parallel must be >= 1"));
  if (opt.max_body_bytes < 1024) return fail(invalid_argument("serve: --max-body-size must be at least 1024 bytes"));
  // Fault injection for reliability tests (docs/reliability.md): never set in production.
  auto faults = install_faults_from_env();
  if (!faults.is_ok()) return fail(faults.status());
  if (!faults->empty()) std::fprintf(stderr, "serve: WARNING: KVSTASH_FAULTS is set: injecting file-I/O faults %s\n", faults->c_str());

  // Block the termination signals before any thread starts, so that they all inherit the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server
  auto waiter = std::make_shared<SignalWaiter>();
  std::thread([waiter, set] {
    int sig = 0;
    sigwait(&set, &sig);
    if (!waiter->serving.load()) {
      std::fprintf(stderr, "serve: signal %d while loading: exiting\n", sig);
      std::_Exit(0);
    }
    {
      std::lock_guard<std::mutex> lk(waiter->mu);
      waiter->signo = sig;
    }
    waiter->cv.notify_all();
    sigwait(&set, &sig);
    std::fprintf(stderr, "serve: second signal: exiting without draining\n");
    std::_Exit(1);
  }).detach();

  HttpServer server(opt);
  if (Status s = server.bind(); !s.is_ok()) return fail(s);
  server.start();
  std::printf("kvstash: listening on http://%s:%d\n", opt.host.c_str(), server.port());
  std::fflush(stdout);

  const auto t0 = std::chrono::steady_clock::now();
  LoadProgress progress;
  progress.begin("opening " + opt.model_path);
  auto model_r = Model::load(opt.model_path);
  if (!model_r.is_ok()) return fail(model_r.status());
  const Model& model = **model_r;
  progress.end(model.name() + ", " + std::to_string(model.n_params()) + " parameters");
  progress.begin("reading weights");
  prefetch_weights(model, progress);
  progress.end(std::to_string(model.weight_bytes() / 1000000) + " MB");
  progress.begin("fingerprinting the model for state files");
  (void)model.fingerprint();
  progress.end("ok");

  ContextParams cp;
  cp.n_ctx = opt.n_ctx;
  cp.n_batch = opt.n_batch;
  cp.n_ubatch = opt.n_ubatch;
  cp.n_threads = opt.n_threads;
  cp.type_k = *tk;
  cp.type_v = *tv;
  auto ctx_r = Context::create(model, cp);
  if (!ctx_r.is_ok()) return fail(ctx_r.status());
  Context& ctx = **ctx_r;

  ServerEngine engine;
  auto tmpl = model.gguf().get_string("tokenizer.chat_template");
  auto chat = ChatTemplate::choose(opt.chat_template, tmpl.is_ok() ? tmpl.value() : std::string());
  if (!chat.is_ok()) return fail(chat.status());
  engine.chat = std::move(chat).value();
  switch (engine.chat.status()) {
    case ChatTemplateStatus::Unrecognized:
      std::fprintf(stderr,
                   "chat template: WARNING: the model's tokenizer.chat_template matches no built-in format; "
                   "/v1/chat/completions answers 501 until the server is started with --chat-template NAME\n");
      break;
    case ChatTemplateStatus::Default:
      std::fprintf(stderr, "chat template: the model has none; using the default, chatml\n");
      break;
    default:
      std::fprintf(stderr, "chat template: %s (%s)\n", chat_format_name(*engine.chat.format()), engine.chat.status_name());
  }
  if (!opt.slot_save_path.empty()) {
    int n_stale = 0;
    auto dir = SlotDir::open(opt.slot_save_path, &n_stale);
    if (!dir.is_ok()) return fail(dir.status());
    engine.slot_dir = std::move(dir).value();
    std::fprintf(stderr, "slot save path: %s (%d stale temporary files removed)\n", engine.slot_dir->path().c_str(), n_stale);
  }
  SchedulerParams sp;
  sp.n_slots = opt.n_parallel;
  sp.slot_wait_ms = opt.slot_wait_ms;
  sp.durable_saves = !opt.slot_save_no_fsync;
  auto sched_r = Scheduler::create(ctx, sp);
  if (!sched_r.is_ok()) return fail(sched_r.status());
  std::unique_ptr<Scheduler> sched = std::move(sched_r).value();
  engine.model = &model;
  engine.scheduler = sched.get();
  server.set_ready(std::move(engine));
  waiter->serving.store(true);
  std::fprintf(stderr, "ready in %.2f s: %d slots of %d tokens, n_ctx %u, %d threads, kernels %s, KV %s/%s\n", secs_since(t0), sched->n_slots(),
               sched->n_ctx_slot(), ctx.params().n_ctx, ctx.pool().n_threads(), ctx.kernels().name, opt.cache_type_k.c_str(),
               opt.cache_type_v.c_str());

  int sig = 0;
  {
    std::unique_lock<std::mutex> lk(waiter->mu);
    waiter->cv.wait(lk, [&] { return waiter->signo != 0; });
    sig = waiter->signo;
  }
  std::fprintf(stderr, "serve: signal %d: draining %d in-flight request(s)\n", sig, server.in_flight());
  server.shutdown();
  sched->stop();
  std::fprintf(stderr, "serve: stopped\n");
  return 0;
}

}  // namespace kvstash::cli
