// Scheduler mechanics. See scheduler.h for the contract; docs/api.md for the HTTP semantics.
#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>

#include "engine/slot_state.h"
#include "engine/text_stream.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
int64_t micros(Clock::time_point t) { return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count(); }

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

const char* stop_type_name(StopType t) {
  switch (t) {
    case StopType::None: return "none";
    case StopType::Eos: return "eos";
    case StopType::Limit: return "limit";
    case StopType::Word: return "word";
  }
  return "none";
}

bool GenStream::next(GenEvent* out, int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return !q_.empty(); })) return false;
  *out = std::move(q_.front());
  q_.pop_front();
  return true;
}

void GenStream::drop_probe() {
  std::lock_guard<std::mutex> lk(probe_mu_);
  probe_ = nullptr;
}

bool GenStream::consumer_alive() {
  if (cancelled()) return false;
  std::lock_guard<std::mutex> lk(probe_mu_);
  if (probe_ && !probe_()) {
    cancel();
    return false;
  }
  return true;
}

void GenStream::push(GenEvent ev) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(std::move(ev));
  }
  cv_.notify_one();
}

struct Scheduler::Task {
  enum class Kind { Generate, Save, Restore, Erase };
  Kind kind = Kind::Generate;
  int64_t id = 0;
  GenRequest req;
  std::shared_ptr<GenStream> stream;
  int32_t id_slot = -1;
  std::string path;
  Clock::time_point deadline;

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  SlotActionResult result;

  void complete(SlotActionResult r) {
    {
      std::lock_guard<std::mutex> lk(mu);
      result = std::move(r);
      done = true;
    }
    cv.notify_all();
  }
};

struct Scheduler::Slot {
  int32_t id = 0;
  enum class State { Idle, Prefill, Generate };
  State state = State::Idle;
  std::vector<int32_t> tokens;  // sequence `id` of the cache, by position 0..n-1
  std::vector<float> logits;    // [n_vocab]: the logits after tokens.back() when logits_valid
  bool logits_valid = false;
  uint64_t last_used = 0;
  uint64_t order = 0;           // start order: prefill is served first come, first served

  std::shared_ptr<Task> task;       // the running generation
  std::shared_ptr<Task> last_task;  // the latest generation, kept for /slots
  std::optional<Sampler> sampler;
  std::optional<TextStream> text;
  size_t n_prompt_done = 0;     // prompt tokens in the cache
  int32_t pending = -1;         // sampled, not yet in the cache
  int32_t n_decoded = 0;
  bool has_new_line = false;
  int32_t n_decode_steps = 0;   // steps that carried this task's tokens
  Clock::time_point t_last_decode;
  bool cancelled = false;       // dropped because its consumer went away
  GenSummary sum;
  Clock::time_point t_start, t_prompt_done;
};

Result<std::unique_ptr<Scheduler>> Scheduler::create(Context& ctx, const SchedulerParams& p) {
  const int64_t n_ctx = ctx.params().n_ctx;
  if (p.n_slots < 1 || p.n_slots > KvCache::kMaxSeqs)
    return invalid_argument("scheduler: " + std::to_string(p.n_slots) + " slots, expected 1.." + std::to_string(KvCache::kMaxSeqs));
  if (n_ctx / p.n_slots < 2)
    return invalid_argument("scheduler: a context of " + std::to_string(n_ctx) + " cells leaves " + std::to_string(n_ctx / p.n_slots) +
                            " per slot for " + std::to_string(p.n_slots) + " slots; each needs at least 2");
  if (p.slot_wait_ms < 0) return invalid_argument("scheduler: negative slot wait");
  if (ctx.cache().n_used() != 0) return invalid_argument("scheduler: the context's cache is not empty");
  std::unique_ptr<Scheduler> s(new Scheduler(ctx, p));
  s->thread_ = std::thread([raw = s.get()] { raw->loop(); });
  return s;
}

Scheduler::Scheduler(Context& ctx, const SchedulerParams& p)
    : ctx_(ctx), params_(p), n_ctx_slot_(static_cast<int32_t>(ctx.params().n_ctx / uint32_t(p.n_slots))),
      n_vocab_(static_cast<int32_t>(ctx.model().hparams().n_vocab)) {
  for (int32_t i = 0; i < p.n_slots; ++i) {
    auto s = std::make_unique<Slot>();
    s->id = i;
    s->logits.resize(size_t(n_vocab_));
    slots_.push_back(std::move(s));
    SlotSnapshot snap;
    snap.id = i;
    snap.n_ctx = n_ctx_slot_;
    snapshots_.push_back(snap);
  }
  metrics_.kv_cells = ctx.cache().n_cells();
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<GenStream> Scheduler::submit(GenRequest req, ConsumerProbe alive) {
  auto t = std::make_shared<Task>();
  t->kind = Task::Kind::Generate;
  t->req = std::move(req);
  t->stream = std::make_shared<GenStream>(std::move(alive));
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!stop_) {
      t->id = next_task_id_++;
      queue_.push_back(t);
      ++metrics_.requests_total;
      cv_.notify_one();
      return t->stream;
    }
  }
  GenEvent ev;
  ev.kind = GenEvent::Kind::Error;
  ev.error = resource_exhausted("the server is shutting down");
  t->stream->push(std::move(ev));
  return t->stream;
}

namespace {
SlotActionResult action_error(Status s) {
  SlotActionResult r;
  r.status = std::move(s);
  return r;
}
}  // namespace

SlotActionResult Scheduler::run_blocking(std::shared_ptr<Task> t) {
  if (t->id_slot < 0 || t->id_slot >= params_.n_slots) return action_error(invalid_argument("Invalid slot ID"));
  t->deadline = Clock::now() + std::chrono::milliseconds(params_.slot_wait_ms);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) return action_error(resource_exhausted("the server is shutting down"));
    t->id = next_task_id_++;
    queue_.push_back(t);
  }
  cv_.notify_one();
  std::unique_lock<std::mutex> lk(t->mu);
  t->cv.wait(lk, [&] { return t->done; });
  return t->result;
}

SlotActionResult Scheduler::save_slot(int32_t id_slot, const std::string& path) {
  auto t = std::make_shared<Task>();
  t->kind = Task::Kind::Save;
  t->id_slot = id_slot;
  t->path = path;
  return run_blocking(std::move(t));
}

SlotActionResult Scheduler::restore_slot(int32_t id_slot, const std::string& path) {
  auto t = std::make_shared<Task>();
  t->kind = Task::Kind::Restore;
  t->id_slot = id_slot;
  t->path = path;
  return run_blocking(std::move(t));
}

SlotActionResult Scheduler::erase_slot(int32_t id_slot) {
  auto t = std::make_shared<Task>();
  t->kind = Task::Kind::Erase;
  t->id_slot = id_slot;
  return run_blocking(std::move(t));
}

std::vector<SlotSnapshot> Scheduler::slots() const {
  std::lock_guard<std::mutex> lk(mu_);
  return snapshots_;
}

int32_t Scheduler::n_idle_slots() const {
  std::lock_guard<std::mutex> lk(mu_);
  int32_t n = 0;
  for (const auto& s : snapshots_) n += !s.is_processing;
  return n;
}

SchedulerMetrics Scheduler::metrics(bool reset_window) {
  std::lock_guard<std::mutex> lk(mu_);
  SchedulerMetrics m = metrics_;
  if (reset_window) {
    metrics_.window_prompt_tokens = metrics_.window_predicted_tokens = 0;
    metrics_.window_decodes = metrics_.window_busy_slots = 0;
    metrics_.window_prompt_seconds = metrics_.window_predicted_seconds = 0;
  }
  return m;
}

// ---- the scheduler thread ----

void Scheduler::publish(const Slot& s) {
  SlotSnapshot snap;
  snap.id = s.id;
  snap.n_ctx = n_ctx_slot_;
  snap.is_processing = s.state != Slot::State::Idle;
  snap.n_cached_tokens = static_cast<int32_t>(s.tokens.size());
  // While idle the figures of the last task stay visible, as in llama.cpp's /slots.
  if (const Task* t = s.last_task.get()) {
    const GenRequest& r = t->req;
    snap.id_task = t->id;
    snap.n_prompt_tokens = static_cast<int32_t>(r.prompt.size());
    snap.n_prompt_tokens_processed = s.sum.n_prompt_processed;
    snap.n_prompt_tokens_cache = s.sum.n_cached;
    snap.n_decoded = s.n_decoded;
    snap.n_predict = r.n_predict;
    snap.has_next_token = snap.is_processing;
    snap.has_new_line = s.has_new_line;
    snap.n_decode_steps = s.n_decode_steps;
    snap.t_last_decode_us = s.n_decode_steps > 0 ? micros(s.t_last_decode) : 0;
    snap.cancelled = s.cancelled;
    snap.params = r.sampling;
    snap.seed = s.sum.seed;
    snap.ignore_eos = r.ignore_eos;
    snap.n_probs = r.n_probs;
    snap.stop = r.stop;
  }
  int32_t processing = 0;
  for (const auto& sp : slots_) processing += sp->state != Slot::State::Idle;
  std::lock_guard<std::mutex> lk(mu_);
  snapshots_[size_t(s.id)] = std::move(snap);
  metrics_.kv_cells_used = ctx_.cache().n_used();
  metrics_.requests_processing = processing;  // a slot that just went idle is not left counted
}

void Scheduler::loop() {
  for (;;) {
    bool active = false;
    for (const auto& s : slots_) active |= s->state != Slot::State::Idle;
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (!active && pending_.empty()) cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_) break;
      for (auto& t : queue_) pending_.push_back(std::move(t));
      queue_.clear();
    }
    place_pending();
    step();
  }
  // Shutdown: whatever is left ends with an error.
  const Status bye = resource_exhausted("the server is shutting down");
  for (auto& s : slots_)
    if (s->state != Slot::State::Idle) fail(*s, bye);
  std::vector<std::shared_ptr<Task>> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    left = std::move(queue_);
    queue_.clear();
  }
  for (auto& t : pending_) left.push_back(std::move(t));
  pending_.clear();
  for (auto& t : left) {
    if (t->kind == Task::Kind::Generate) {
      GenEvent ev;
      ev.kind = GenEvent::Kind::Error;
      ev.error = bye;
      t->stream->push(std::move(ev));
    } else {
      t->complete(action_error(bye));
    }
  }
}

// The idle slot whose cache shares the longest prefix with the prompt, when that prefix is worth
// it (more than a shared BOS and at least 10% of the prompt, llama.cpp's slot_prompt_similarity);
// otherwise the least recently used idle slot (never used ones first).
Scheduler::Slot* Scheduler::pick_slot(const GenRequest& r) {
  Slot* best = nullptr;
  size_t best_lcp = 0;
  Slot* lru = nullptr;
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (s.state != Slot::State::Idle) continue;
    if (!lru || s.last_used < lru->last_used) lru = &s;
    const size_t lcp = r.cache_prompt ? common_prefix(s.tokens, r.prompt) : 0;
    if (lcp < 2 || lcp * 10 < r.prompt.size()) continue;
    if (!best || lcp > best_lcp || (lcp == best_lcp && s.last_used < best->last_used)) {
      best = &s;
      best_lcp = lcp;
    }
  }
  return best ? best : lru;
}

namespace {
Status cancelled_status() { return io_error("the request was cancelled: its client disconnected"); }
}  // namespace

// A queued request whose client left: it never takes a slot.
void Scheduler::drop_queued(Task& t) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++metrics_.requests_cancelled;
  }
  GenEvent ev;
  ev.kind = GenEvent::Kind::Error;
  ev.error = cancelled_status();
  t.stream->push(std::move(ev));
}

void Scheduler::place_pending() {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Task>> keep;
  int32_t deferred = 0;
  for (auto& t : pending_) {
    if (t->kind == Task::Kind::Generate) {
      if (t->stream->cancelled()) {
        drop_queued(*t);
        continue;
      }
      Slot* s = nullptr;
      if (t->req.id_slot >= 0 && t->req.id_slot < params_.n_slots) {
        Slot& c = *slots_[size_t(t->req.id_slot)];
        if (c.state == Slot::State::Idle) s = &c;
      } else if (t->req.id_slot < 0) {
        s = pick_slot(t->req);
      } else {
        GenEvent ev;
        ev.kind = GenEvent::Kind::Error;
        ev.error = invalid_argument("Invalid slot ID " + std::to_string(t->req.id_slot));
        t->stream->push(std::move(ev));
        continue;
      }
      if (s && !t->stream->consumer_alive()) {  // probed only when it would take a slot
        drop_queued(*t);
        continue;
      }
      if (s) {
        start_generation(t, *s);
      } else {
        ++deferred;
        keep.push_back(std::move(t));
      }
      continue;
    }
    Slot& s = *slots_[size_t(t->id_slot)];
    if (s.state == Slot::State::Idle) {
      run_action(*t, s);
    } else if (now >= t->deadline) {
      SlotActionResult r;
      r.busy = true;
      r.status = resource_exhausted("slot " + std::to_string(s.id) + " is busy: still processing after " +
                                    std::to_string(params_.slot_wait_ms) + " ms");
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (t->kind == Task::Kind::Save) ++metrics_.slot_save_fail;
        if (t->kind == Task::Kind::Restore) ++metrics_.slot_restore_fail;
      }
      t->complete(std::move(r));
    } else {
      keep.push_back(std::move(t));
    }
  }
  pending_ = std::move(keep);
  int32_t processing = 0;
  for (const auto& s : slots_) processing += s->state != Slot::State::Idle;
  std::lock_guard<std::mutex> lk(mu_);
  metrics_.requests_deferred = deferred;
  metrics_.requests_processing = processing;
}

void Scheduler::run_action(Task& t, Slot& s) {
  const auto t0 = Clock::now();
  KvCache& cache = ctx_.cache();
  SlotActionResult r;
  switch (t.kind) {
    case Task::Kind::Save: {
      auto sv = slot_state_save(cache, s.id, ctx_.model().fingerprint(), s.logits_valid && !s.tokens.empty() ? s.logits.data() : nullptr,
                                uint32_t(n_vocab_), t.path, params_.durable_saves, &ctx_.pool());
      if (sv.is_ok()) {
        r.n_tokens = static_cast<int32_t>(sv->n_tokens);
        r.n_bytes = sv->n_bytes;
      } else {
        r.status = sv.status();
      }
      break;
    }
    case Task::Kind::Restore: {
      // Slot actions run on the scheduler thread between steps: the context's pool is idle.
      auto rs = slot_state_restore(cache, s.id, ctx_.model().fingerprint(), n_vocab_, n_ctx_slot_, t.path, &ctx_.pool());
      if (rs.is_ok()) {
        s.tokens = std::move(rs->tokens);
        s.logits_valid = !rs->logits.empty() && !s.tokens.empty();
        if (s.logits_valid) s.logits = std::move(rs->logits);
        r.n_tokens = static_cast<int32_t>(s.tokens.size());
        r.n_bytes = rs->n_bytes;
      } else {
        r.status = rs.status();
        // The state layer leaves the sequence as it was; if it could not (the file changed
        // under it), keep the token list true to the cache.
        if (cache.seq_n_cells(s.id) != s.tokens.size()) {
          cache.seq_rm(s.id, -1, -1);
          s.tokens.clear();
          s.logits_valid = false;
        }
      }
      break;
    }
    case Task::Kind::Erase:
      r.n_tokens = static_cast<int32_t>(s.tokens.size());
      cache.seq_rm(s.id, -1, -1);
      s.tokens.clear();
      s.logits_valid = false;
      break;
    case Task::Kind::Generate: return;
  }
  r.ms = ms_between(t0, Clock::now());
  {
    std::lock_guard<std::mutex> lk(mu_);
    const bool ok = r.status.is_ok();
    if (t.kind == Task::Kind::Save) {
      (ok ? metrics_.slot_save_ok : metrics_.slot_save_fail) += 1;
      if (ok) metrics_.slot_bytes_written += r.n_bytes;
    } else if (t.kind == Task::Kind::Restore) {
      (ok ? metrics_.slot_restore_ok : metrics_.slot_restore_fail) += 1;
      if (ok) metrics_.slot_bytes_read += r.n_bytes;
    } else {
      metrics_.slot_erase += 1;
    }
  }
  publish(s);
  t.complete(std::move(r));
}

// ---- generation ----

void Scheduler::start_generation(const std::shared_ptr<Task>& tp, Slot& s) {
  Task& t = *tp;
  const GenRequest& r = t.req;
  auto fail_task = [&](Status st) {
    GenEvent ev;
    ev.kind = GenEvent::Kind::Error;
    ev.error = std::move(st);
    t.stream->push(std::move(ev));
  };
  if (r.prompt.empty()) return fail_task(invalid_argument("the prompt is empty"));
  if (r.prompt.size() >= size_t(n_ctx_slot_))
    return fail_task(invalid_argument("the prompt has " + std::to_string(r.prompt.size()) + " tokens, the slot context " +
                                      std::to_string(n_ctx_slot_)));
  auto smp = Sampler::create(r.sampling, n_vocab_);
  if (!smp.is_ok()) return fail_task(smp.status());

  // Reuse the longest common prefix. A fully cached prompt needs the logits after its last
  // token: stored ones when the cache holds exactly the prompt, else that token is recomputed.
  size_t lcp = r.cache_prompt ? common_prefix(s.tokens, r.prompt) : 0;
  bool from_logits = false;
  if (lcp == r.prompt.size()) {
    if (s.logits_valid && s.tokens.size() == r.prompt.size()) from_logits = true;
    else lcp = r.prompt.size() - 1;
  }
  if (lcp < s.tokens.size()) {
    ctx_.cache().seq_rm(s.id, static_cast<int32_t>(lcp), -1);
    s.tokens.resize(lcp);
    s.logits_valid = false;
  }
  s.task = tp;
  s.last_task = s.task;
  s.sampler.emplace(std::move(smp).value());
  for (int32_t tok : r.prompt) s.sampler->accept(tok);
  s.text.emplace(r.stop);
  s.n_prompt_done = from_logits ? r.prompt.size() : lcp;
  s.pending = -1;
  s.n_decoded = 0;
  s.has_new_line = false;
  s.n_decode_steps = 0;
  s.cancelled = false;
  s.sum = GenSummary{};
  s.sum.id_slot = s.id;
  s.sum.id_task = t.id;
  s.sum.seed = s.sampler->seed();
  s.sum.n_prompt = static_cast<int32_t>(r.prompt.size());
  s.sum.n_cached = static_cast<int32_t>(s.n_prompt_done);
  s.sum.n_prompt_processed = s.sum.n_prompt - s.sum.n_cached;
  s.t_start = Clock::now();
  s.order = ++use_clock_;
  s.last_used = s.order;
  s.state = Slot::State::Prefill;
  {
    std::lock_guard<std::mutex> lk(mu_);
    metrics_.prompt_tokens_cached_total += uint64_t(s.sum.n_cached);
  }
  publish(s);
  if (from_logits) on_logits(s, s.logits.data());
}

void Scheduler::release(Slot& s) {
  s.state = Slot::State::Idle;
  s.task.reset();
  s.sampler.reset();
  s.text.reset();
  s.pending = -1;
  s.last_used = ++use_clock_;
  publish(s);
}

void Scheduler::fail(Slot& s, const Status& st) {
  GenEvent ev;
  ev.kind = GenEvent::Kind::Error;
  ev.error = st;
  // Publish the idle slot before the client can see the end of its request (a /slots right
  // after the response must not show the slot still processing).
  auto stream = s.task->stream;
  release(s);
  stream->push(std::move(ev));
}

// The consumer is gone: the slot is freed now, before the next batch is built, so the only step
// that computed for a departed client is the one that was running when it left. Its cache and
// token list stay true to each other (the pending token was never evaluated) and reusable.
void Scheduler::drop_cancelled(Slot& s) {
  s.cancelled = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++metrics_.requests_cancelled;
  }
  GenEvent ev;
  ev.kind = GenEvent::Kind::Error;
  ev.error = cancelled_status();
  auto stream = s.task->stream;  // see fail(): publish first, then answer
  release(s);
  stream->push(std::move(ev));
}

void Scheduler::finish(Slot& s, StopType stop, bool truncated) {
  const auto now = Clock::now();
  s.sum.n_predicted = s.n_decoded;
  s.sum.predicted_ms = s.n_decoded > 0 ? ms_between(s.t_prompt_done, now) : 0.0;
  s.sum.n_tokens_cached = static_cast<int32_t>(s.tokens.size());
  s.sum.stop_type = stop;
  s.sum.stopping_word = s.text->stopping_word();
  s.sum.truncated = truncated;
  {
    std::lock_guard<std::mutex> lk(mu_);
    metrics_.tokens_predicted_total += uint64_t(s.n_decoded);
    metrics_.predicted_seconds_total += s.sum.predicted_ms / 1000.0;
    metrics_.window_predicted_tokens += uint64_t(s.n_decoded);
    metrics_.window_predicted_seconds += s.sum.predicted_ms / 1000.0;
  }
  GenEvent ev;
  ev.kind = GenEvent::Kind::Done;
  ev.summary = s.sum;
  auto stream = s.task->stream;  // see fail(): publish first, then answer
  release(s);
  stream->push(std::move(ev));
}

namespace {
// llama.cpp's default n_probs: the softmax of the raw logits, most probable first.
void raw_probs(const float* logits, int32_t n_vocab, int32_t n, int32_t chosen, std::vector<float>& p, GenToken* out) {
  p.resize(size_t(n_vocab));
  float mx = -INFINITY;
  for (int32_t i = 0; i < n_vocab; ++i)
    if (!std::isnan(logits[i])) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int32_t i = 0; i < n_vocab; ++i) {
    p[size_t(i)] = std::isnan(logits[i]) ? 0.0f : std::exp(logits[i] - mx);
    sum += p[size_t(i)];
  }
  for (auto& v : p) v = static_cast<float>(v / sum);
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const int32_t k = std::min(n, n_vocab);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return p[size_t(a)] != p[size_t(b)] ? p[size_t(a)] > p[size_t(b)] : a < b;
  });
  out->top.clear();
  for (int32_t i = 0; i < k; ++i) out->top.push_back({ids[size_t(i)], p[size_t(ids[size_t(i)])]});
  out->prob = p[size_t(chosen)];
}
}  // namespace

void Scheduler::on_logits(Slot& s, const float* logits) {
  const auto now = Clock::now();
  const GenRequest& r = s.task->req;
  if (s.state == Slot::State::Prefill) {
    s.state = Slot::State::Generate;
    s.t_prompt_done = now;
    s.sum.prompt_ms = ms_between(s.t_start, now);
    std::lock_guard<std::mutex> lk(mu_);
    metrics_.prompt_seconds_total += s.sum.prompt_ms / 1000.0;
    metrics_.window_prompt_seconds += s.sum.prompt_ms / 1000.0;
  }
  if (r.n_predict == 0) return finish(s, StopType::Limit, false);

  GenToken tok;
  std::vector<int32_t> post_ids;
  std::vector<float> post_p;
  if (r.n_probs > 0 && r.post_sampling_probs) {
    post_ids.resize(size_t(r.n_probs));
    post_p.resize(size_t(r.n_probs));
    const int32_t k = s.sampler->top_probs(logits, r.n_probs, post_ids.data(), post_p.data());
    for (int32_t i = 0; i < k; ++i) tok.top.push_back({post_ids[size_t(i)], post_p[size_t(i)]});
  }
  const int32_t id = s.sampler->sample(logits);
  s.sampler->accept(id);
  tok.id = id;
  if (r.n_probs > 0) {
    if (r.post_sampling_probs) {
      for (const auto& tp : tok.top)
        if (tp.id == id) tok.prob = tp.prob;
    } else {
      raw_probs(logits, n_vocab_, r.n_probs, id, probs_scratch_, &tok);
    }
  }
  ++s.n_decoded;
  const Vocab& vocab = ctx_.model().vocab();
  bool word = false;
  tok.text = s.text->push(vocab.token_to_piece(id), &word);
  StopType stop = StopType::None;
  bool truncated = false;
  if (word) stop = StopType::Word;
  else if (!r.ignore_eos && vocab.is_eog(id)) stop = StopType::Eos;
  else if (r.n_predict > 0 && s.n_decoded >= r.n_predict) stop = StopType::Limit;
  else if (s.tokens.size() >= size_t(n_ctx_slot_)) {
    stop = StopType::Limit;  // the slot context is full: the new token cannot be evaluated
    truncated = true;
  }
  if (stop != StopType::None && stop != StopType::Word) tok.text += s.text->flush();
  if (tok.text.find('\n') != std::string::npos) s.has_new_line = true;
  GenEvent ev;
  ev.kind = GenEvent::Kind::Token;
  ev.token = std::move(tok);
  ev.summary.id_slot = s.id;  // partial responses name their slot
  s.task->stream->push(std::move(ev));
  if (stop != StopType::None) return finish(s, stop, truncated);
  s.pending = id;
}

bool Scheduler::step() {
  // Departed clients free their slots before the batch is built. t_step is taken before the
  // probes, so a step that carries a slot's tokens began before its client was seen gone.
  const auto t_step = Clock::now();
  for (auto& sp : slots_)
    if (sp->state != Slot::State::Idle && !sp->task->stream->consumer_alive()) drop_cancelled(*sp);

  batch_.clear();
  std::vector<Slot*> outputs;                  // slots whose logits come back, in batch order
  std::vector<std::pair<Slot*, int32_t>> fed;  // slots with tokens in the batch, and how many
  int32_t budget = ctx_.params().n_batch;
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (s.state != Slot::State::Generate || s.pending < 0 || budget == 0) continue;
    batch_.add(s.pending, static_cast<int32_t>(s.tokens.size()), s.id, true);
    outputs.push_back(&s);
    fed.emplace_back(&s, 1);
    --budget;
  }
  std::vector<Slot*> prefill;
  for (auto& sp : slots_)
    if (sp->state == Slot::State::Prefill) prefill.push_back(sp.get());
  std::sort(prefill.begin(), prefill.end(), [](const Slot* a, const Slot* b) { return a->order < b->order; });
  for (Slot* s : prefill) {
    if (budget == 0) break;
    const std::vector<int32_t>& prompt = s->task->req.prompt;
    const int32_t n = std::min<int32_t>(budget, static_cast<int32_t>(prompt.size() - s->n_prompt_done));
    for (int32_t i = 0; i < n; ++i) {
      const size_t p = s->n_prompt_done + size_t(i);
      batch_.add(prompt[p], static_cast<int32_t>(p), s->id, p + 1 == prompt.size());
    }
    if (s->n_prompt_done + size_t(n) == prompt.size()) outputs.push_back(s);
    fed.emplace_back(s, n);
    budget -= n;
  }
  if (batch_.size() == 0) return false;

  if (Status st = ctx_.decode(batch_); !st.is_ok()) {
    for (auto& [s, n] : fed) fail(*s, st);  // decode changed nothing: token lists stay true
    return true;
  }
  uint64_t n_prompt_tokens = 0;
  for (auto& [s, n] : fed) {
    ++s->n_decode_steps;
    s->t_last_decode = t_step;
    if (s->state == Slot::State::Generate) {
      s->tokens.push_back(s->pending);
      s->pending = -1;
    } else {
      const auto& prompt = s->task->req.prompt;
      s->tokens.insert(s->tokens.end(), prompt.begin() + std::ptrdiff_t(s->n_prompt_done),
                       prompt.begin() + std::ptrdiff_t(s->n_prompt_done) + n);
      s->n_prompt_done += size_t(n);
      n_prompt_tokens += uint64_t(n);
    }
    s->logits_valid = false;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    metrics_.prompt_tokens_total += n_prompt_tokens;
    metrics_.window_prompt_tokens += n_prompt_tokens;
    ++metrics_.n_decode_total;
    ++metrics_.window_decodes;
    metrics_.n_busy_slots_total += fed.size();
    metrics_.window_busy_slots += fed.size();
    metrics_.n_tokens_max = std::max<uint64_t>(metrics_.n_tokens_max, uint64_t(batch_.size()));
  }
  for (size_t k = 0; k < outputs.size(); ++k) {
    Slot& s = *outputs[k];
    std::copy_n(ctx_.logits(static_cast<int32_t>(k)), size_t(n_vocab_), s.logits.begin());
    s.logits_valid = true;
    on_logits(s, s.logits.data());
  }
  // Progress figures for /slots (a cheap refresh of the counters only).
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [s, n] : fed) {
    SlotSnapshot& snap = snapshots_[size_t(s->id)];
    snap.n_decoded = s->n_decoded;
    snap.n_cached_tokens = static_cast<int32_t>(s->tokens.size());
    snap.n_decode_steps = s->n_decode_steps;
    snap.t_last_decode_us = micros(s->t_last_decode);
  }
  metrics_.kv_cells_used = ctx_.cache().n_used();
  return true;
}

}  // namespace kvstash
