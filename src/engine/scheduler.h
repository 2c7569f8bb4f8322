// Scheduler: continuous batching of generation requests over n_slots slots of one Context.
// Owns: the scheduler thread — after start() the only user of the Context and its KV cache —
// the slots (slot i = sequence i, at most n_ctx / n_slots tokens each), the task queue and the
// counters behind /metrics. Each step decodes ONE batch holding one token of every generating
// slot plus prompt chunks of slots in prefill (at most n_batch tokens), then samples per slot.
// Save/restore/erase run on the scheduler thread between steps, once their slot is idle.
// A request whose consumer is gone (cancelled, or its probe says so) is dropped before the next
// batch is built: it costs at most the decode step already running.
// Never depends on HTTP or JSON. Thread-safe: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "engine/context.h"
#include "engine/sampler.h"

namespace kvstash {

struct SchedulerParams {
  int32_t n_slots = 1;
  int32_t slot_wait_ms = 30000;  // how long a save/restore/erase waits for a busy slot
  bool durable_saves = true;     // fsync slot saves
};

enum class StopType { None, Eos, Limit, Word };
const char* stop_type_name(StopType t);  // "none", "eos", "limit", "word"

struct GenRequest {
  std::vector<int32_t> prompt;  // the caller validated: non-empty, ids in [0, n_vocab)
  SamplerParams sampling;       // the caller validated (validate())
  int32_t n_predict = -1;       // -1: until end of generation or the slot context is full; 0: prompt only
  int32_t id_slot = -1;         // -1: any slot (best prefix match, then least recently used)
  bool cache_prompt = true;     // reuse the longest common prefix of the slot's cached tokens
  bool ignore_eos = false;
  int32_t n_probs = 0;          // top probabilities to return per token
  bool post_sampling_probs = false;
  std::vector<std::string> stop;
};

struct TokenProb {
  int32_t id = 0;
  float prob = 0.0f;
};

struct GenToken {
  int32_t id = 0;
  std::string text;             // text this token releases (stop strings and UTF-8 safe); may be ""
  float prob = 0.0f;            // probability of id (when n_probs > 0)
  std::vector<TokenProb> top;   // n_probs most probable tokens
};

struct GenSummary {
  int32_t id_slot = -1;
  int64_t id_task = 0;
  uint64_t seed = 0;                 // the sampler's effective seed
  int32_t n_prompt = 0;              // tokens in the prompt (tokens_evaluated)
  int32_t n_cached = 0;              // prompt tokens reused from the cache (timings.cache_n)
  int32_t n_prompt_processed = 0;    // prompt tokens computed (timings.prompt_n)
  int32_t n_predicted = 0;           // tokens sampled
  double prompt_ms = 0, predicted_ms = 0;
  int32_t n_tokens_cached = 0;       // the slot's cached tokens afterwards (tokens_cached)
  StopType stop_type = StopType::None;
  std::string stopping_word;
  bool truncated = false;            // stopped by the slot context
};

struct GenEvent {
  enum class Kind { Token, Done, Error };
  Kind kind = Kind::Token;
  GenToken token;
  GenSummary summary;  // Done (Token: only id_slot is set)
  Status error;        // Error
};

// Asks whether a request's consumer is still there (e.g. its client's socket is open). Called on
// the scheduler thread before every decode step that would carry the request's tokens, so it
// must be cheap and must not block.
using ConsumerProbe = std::function<bool()>;

// The channel from the scheduler to one request. Thread-safe.
class GenStream {
 public:
  explicit GenStream(ConsumerProbe probe = nullptr) : probe_(std::move(probe)) {}
  // Waits up to timeout_ms for the next event; false on timeout.
  bool next(GenEvent* out, int timeout_ms);
  // The consumer is gone (client disconnected): the scheduler frees the slot at its next step.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  // The probe is never called again once this returns (what it captured may then go away).
  void drop_probe();
  // Scheduler thread: false when cancelled or when the probe says the consumer is gone (which
  // cancels the stream).
  bool consumer_alive();
  void push(GenEvent ev);

 private:
  std::mutex mu_;  // q_
  std::condition_variable cv_;
  std::deque<GenEvent> q_;
  std::atomic<bool> cancelled_{false};
  std::mutex probe_mu_;  // probe_: held while it runs, so drop_probe() waits for a running call
  ConsumerProbe probe_;
};

struct SlotActionResult {
  Status status;             // not ok: failed (busy says whether it was the wait bound)
  bool busy = false;         // the slot stayed busy longer than slot_wait_ms
  int32_t n_tokens = 0;      // n_saved / n_restored / n_erased
  uint64_t n_bytes = 0;      // n_written / n_read
  double ms = 0;
};

struct SlotSnapshot {
  int32_t id = 0;
  int32_t n_ctx = 0;
  bool is_processing = false;
  int64_t id_task = -1;
  int32_t n_cached_tokens = 0;  // tokens in the slot's cache now
  // the current or last task
  int32_t n_prompt_tokens = 0, n_prompt_tokens_processed = 0, n_prompt_tokens_cache = 0;
  int32_t n_decoded = 0, n_predict = -1;
  bool has_next_token = false, has_new_line = false;
  // Decode steps (forward passes) that carried the task's tokens, prompt chunks included, and
  // when the last one began (steady clock, microseconds: CLOCK_MONOTONIC on Linux).
  int32_t n_decode_steps = 0;
  int64_t t_last_decode_us = 0;
  bool cancelled = false;  // the task was dropped because its consumer went away
  SamplerParams params;
  uint64_t seed = 0;
  bool ignore_eos = false;
  int32_t n_probs = 0;
  std::vector<std::string> stop;
};

struct SchedulerMetrics {
  // counters since start
  uint64_t prompt_tokens_total = 0;      // prompt tokens computed
  double prompt_seconds_total = 0;
  uint64_t prompt_tokens_cached_total = 0;
  uint64_t tokens_predicted_total = 0;
  double predicted_seconds_total = 0;
  uint64_t n_decode_total = 0;
  uint64_t n_busy_slots_total = 0;       // sum over decodes of slots in the batch
  uint64_t n_tokens_max = 0;             // largest batch
  uint64_t requests_total = 0;
  uint64_t requests_cancelled = 0;       // dropped because their consumer went away (queued or running)
  uint64_t slot_save_ok = 0, slot_save_fail = 0, slot_restore_ok = 0, slot_restore_fail = 0, slot_erase = 0;
  uint64_t slot_bytes_written = 0, slot_bytes_read = 0;
  // since the previous metrics(true) call
  uint64_t window_prompt_tokens = 0, window_predicted_tokens = 0, window_decodes = 0, window_busy_slots = 0;
  double window_prompt_seconds = 0, window_predicted_seconds = 0;
  // now
  int32_t requests_processing = 0, requests_deferred = 0;
  uint32_t kv_cells_used = 0, kv_cells = 0;
};

class Scheduler {
 public:
  // The context must outlive the scheduler; nothing else may use it after this call.
  // InvalidArgument when n_slots is out of 1..min(64, n_ctx) range.
  static Result<std::unique_ptr<Scheduler>> create(Context& ctx, const SchedulerParams& p);
  ~Scheduler();  // stop() then join
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  int32_t n_slots() const { return params_.n_slots; }
  int32_t n_ctx_slot() const { return n_ctx_slot_; }
  const Model& model() const { return ctx_.model(); }

  // Queues a generation. Events arrive on the returned stream: Token*, then Done or Error. A
  // request whose consumer goes away (GenStream::cancel, or `alive` answering false) is dropped
  // before the next decode step and ends with an IO error event.
  std::shared_ptr<GenStream> submit(GenRequest req, ConsumerProbe alive = nullptr);

  // Slot actions; they block until done, waiting up to slot_wait_ms for a busy slot.
  // `path` is resolved and confined by the caller.
  SlotActionResult save_slot(int32_t id_slot, const std::string& path);
  SlotActionResult restore_slot(int32_t id_slot, const std::string& path);
  SlotActionResult erase_slot(int32_t id_slot);

  std::vector<SlotSnapshot> slots() const;
  int32_t n_idle_slots() const;
  // reset_window: start a new window for the rate gauges (like llama.cpp's per-scrape buckets).
  SchedulerMetrics metrics(bool reset_window);

  // Stops the thread after the current step; queued and running requests end with an error.
  void stop();

 private:
  struct Task;
  struct Slot;
  Scheduler(Context& ctx, const SchedulerParams& p);

  SlotActionResult run_blocking(std::shared_ptr<Task> t);
  void loop();
  void take_queue(std::vector<std::shared_ptr<Task>>* pending);
  void place_pending();
  void run_action(Task& t, Slot& s);
  void release(Slot& s);
  void start_generation(const std::shared_ptr<Task>& t, Slot& s);
  bool step();
  void on_logits(Slot& s, const float* logits);
  void finish(Slot& s, StopType stop, bool truncated);
  void fail(Slot& s, const Status& st);
  void drop_cancelled(Slot& s);
  void drop_queued(Task& t);
  void publish(const Slot& s);  // refreshes the slot's snapshot (call on state changes)
  Slot* pick_slot(const GenRequest& r);

  Context& ctx_;
  SchedulerParams params_;
  int32_t n_ctx_slot_ = 0;
  int32_t n_vocab_ = 0;

  mutable std::mutex mu_;  // queue_, stop_, snapshots_, metrics_
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Task>> queue_;
  bool stop_ = false;
  std::vector<SlotSnapshot> snapshots_;
  SchedulerMetrics metrics_;
  int64_t next_task_id_ = 0;

  // scheduler thread only
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<std::shared_ptr<Task>> pending_;
  Batch batch_;
  std::vector<float> probs_scratch_;
  uint64_t use_clock_ = 0;
  std::thread thread_;
};

}  // namespace kvstash
