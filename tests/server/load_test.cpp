// Load and lifecycle: the real `kvstash serve` on loopback (-np 4, --slot-save-path, --metrics)
// under a few hundred bounded requests, 32 at a time, mixing completions and chat completions
// (plain and streamed, llama.cpp and OpenAI routes), clients that leave in the middle of a
// stream or while they wait, slot save/restore/erase churn, /metrics, /slots and /slots/saved.
// It checks that
// - every answer is 200 or a documented error: here only 503 "slot N is busy" for a slot action
//   that waited past --slot-wait-ms (docs/api.md §4); anything else, or a failed connection, fails;
// - greedy requests for the same prompt all got the same text, whatever slot, batch, cached
//   prefix or restored state they met;
// - the server is alive, all slots are idle at the end, and the metrics' counters moved by
//   exactly what was sent (the prompt-token sum within bounds: a client that leaves while it
//   waits may or may not have had its prompt computed);
// - the server's RSS after the run is within kRssMarginBytes of its level after a warm-up phase
//   that ran the same mix;
// and prints the figures: requests, answers by kind and status, p50/p99 latency per kind, RSS,
// wall time. KVSTASH_LOAD_REQUESTS (default 320) and KVSTASH_LOAD_CONCURRENCY (default 32) scale
// it; docs/performance.md records a larger run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "server_harness.h"

namespace kvstash::test {
namespace {

using Clock = std::chrono::steady_clock;

// The RSS may grow by at most this much between the end of the warm-up and the end of the run.
// The warm-up runs the same mix at the same concurrency, so every HTTP thread, malloc arena,
// slot buffer and state-file buffer already exists; what remains is allocator slack: +0.6 MiB
// after 320 requests, +1.3 MiB after 5000, +1.6 MiB after 20000 (Release; docs/performance.md).
// 16 MiB is 10x that plateau, and a leak of a per-request object (a stream, a response, a
// logits copy) of a few KiB would cross it within a few thousand requests.
// Sanitizer builds keep their own books in the process: ThreadSanitizer's shadow memory and
// sync-object metadata grow with every new address and thread (+27 MiB over 320 requests), and
// AddressSanitizer's quarantine and size-class caches hold freed blocks (+28 MiB over 320
// requests, +38 MiB over 2000, with the quarantine capped at 16 MiB below). There the bound only
// catches gross growth; LeakSanitizer checks leaks exactly when the ASan server exits.
constexpr double kMiB = 1024.0 * 1024.0;
#if defined(__SANITIZE_THREAD__)
constexpr double kRssMarginBytes = 96 * kMiB;
#elif defined(__SANITIZE_ADDRESS__)
constexpr double kRssMarginBytes = 64 * kMiB;
#else
constexpr double kRssMarginBytes = 16 * kMiB;
#endif
constexpr int kSlots = 4;
constexpr int kLongPredict = 2000;  // requests whose client leaves: they cannot finish first

enum class Kind {
  Completion, CompletionStream, OaiCompletion, OaiCompletionStream, Chat, ChatStream,
  LeaveMidStream, LeaveWhileWaiting, Save, Restore, Erase, Metrics, Slots, SavedList,
};
constexpr int kKinds = 14;
const char* kind_name(Kind k) {
  static const char* names[kKinds] = {"completion", "completion stream", "v1/completions", "v1/completions stream",
                                      "chat", "chat stream", "leave mid-stream", "leave while waiting",
                                      "slot save", "slot restore", "slot erase", "metrics", "slots", "slots/saved"};
  return names[int(k)];
}
bool is_generation(Kind k) { return k <= Kind::ChatStream; }
bool is_leave(Kind k) { return k == Kind::LeaveMidStream || k == Kind::LeaveWhileWaiting; }

// One cycle of the mix: 13 generations, 2 clients that leave, 3 slot actions, 3 reads.
constexpr Kind kCycle[] = {
    Kind::Completion, Kind::CompletionStream, Kind::OaiCompletion, Kind::Chat,         Kind::ChatStream,
    Kind::Metrics,    Kind::Completion,       Kind::OaiCompletionStream, Kind::Chat,   Kind::LeaveMidStream,
    Kind::Save,       Kind::CompletionStream, Kind::ChatStream,   Kind::Restore,       Kind::Completion,
    Kind::LeaveWhileWaiting, Kind::Erase,     Kind::Chat,         Kind::Slots,         Kind::CompletionStream,
    Kind::SavedList,
};
constexpr int kCycleLen = int(sizeof kCycle / sizeof kCycle[0]);

const char* kPrompts[8] = {"Once upon a time",     "The little girl",        "One day, a big dog", "Tom and Sue went to",
                           "There was a cat named", "In the park, a boy", "The sun was shining and", "Mom said to Lily"};

struct Outcome {
  Kind kind = Kind::Completion;
  int status = 0;      // HTTP status; 0: no answer (connection failed); -1: the client left on purpose
  double ms = 0;       // until the whole answer (leave mid-stream: the first event) was read
  std::string error;   // non-empty: a failure of this request
  // generations
  int group = -1;      // prompt index, +8 for chat: greedy answers in a group must be equal
  std::string content;
  int prompt_n = 0, cache_n = 0, predicted_n = 0;
  int n_prompt = 0;    // leave mid-stream: tokens_evaluated of the first event
  // slot actions
  uint64_t n_bytes = 0;
};

struct Config {
  int n_requests = 320;
  int concurrency = 32;
};

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::max(1, std::atoi(v)) : dflt;
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// The timings of a final llama.cpp object or OpenAI chunk/result.
void take_timings(const json& j, Outcome* o) {
  const json& t = j.at("timings");
  o->prompt_n = t.at("prompt_n");
  o->cache_n = t.at("cache_n");
  o->predicted_n = t.at("predicted_n");
}

json generation_body(Kind k, int p) {
  const int n_predict = 16 + 4 * p;  // bounded: 16..44 tokens
  json b = {{"temperature", 0}};
  if (k == Kind::Chat || k == Kind::ChatStream) {
    b["messages"] = json::array({{{"role", "user"}, {"content", kPrompts[p]}}});
    b["max_tokens"] = n_predict;
  } else {
    b["prompt"] = kPrompts[p];
    b[k == Kind::OaiCompletion || k == Kind::OaiCompletionStream ? "max_tokens" : "n_predict"] = n_predict;
  }
  if (k == Kind::CompletionStream || k == Kind::OaiCompletionStream || k == Kind::ChatStream) {
    b["stream"] = true;
    if (k != Kind::CompletionStream) b["stream_options"] = {{"include_usage", true}};
  }
  return b;
}

// A generation through httplib::Client; parses and checks the answer's shape.
void generate(const ServerProcess& srv, Kind k, int p, Outcome* o) {
  const bool chat = k == Kind::Chat || k == Kind::ChatStream;
  const bool oai = chat || k == Kind::OaiCompletion || k == Kind::OaiCompletionStream;
  const bool stream = k == Kind::CompletionStream || k == Kind::OaiCompletionStream || k == Kind::ChatStream;
  o->group = p + (chat ? 8 : 0);
  const std::string path = chat ? "/v1/chat/completions" : oai ? "/v1/completions" : "/completion";
  auto c = srv.client(120);
  const HttpResult r = post(c, path, generation_body(k, p));
  o->status = r.status;
  if (r.status != 200) return;
  if (!stream) {
    const json& text = !oai ? r.body.at("content") : chat ? r.body.at("choices")[0].at("message").at("content") : r.body.at("choices")[0].at("text");
    o->content = text.get<std::string>();
    take_timings(r.body, o);
    return;
  }
  const std::vector<std::string> events = sse_payloads(r.raw);
  if (events.empty()) throw std::runtime_error("empty stream");
  bool done = false;
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i] == "[DONE]") {
      if (!oai || i + 1 != events.size()) throw std::runtime_error("misplaced [DONE]");
      done = true;
      continue;
    }
    const json e = json::parse(events[i]);
    if (e.contains("error")) throw std::runtime_error("error event: " + events[i]);
    if (!oai) {
      if (e.at("stop") == true) {
        if (i + 1 != events.size()) throw std::runtime_error("events after the final one");
        take_timings(e, o);
        done = true;
      } else {
        o->content += e.at("content").get<std::string>();
      }
      continue;
    }
    if (e.contains("timings")) take_timings(e, o);
    const json& choices = e.at("choices");
    if (choices.empty()) continue;  // the usage chunk
    const json& piece = chat ? choices[0].at("delta").value("content", json("")) : choices[0].at("text");
    if (piece.is_string()) o->content += piece.get<std::string>();
  }
  if (!done) throw std::runtime_error("stream without its end");
}

// A client that sends a long generation on a raw socket and leaves: mid-stream after its first
// event, or before any answer (at once, or after 20 ms).
void leave(const ServerProcess& srv, Kind k, int i, int p, Clock::time_point t0, Outcome* o) {
  json body = {{"prompt", kPrompts[p]}, {"n_predict", kLongPredict}, {"ignore_eos", true}, {"temperature", 0}};
  if (k == Kind::LeaveMidStream) body["stream"] = true;
  const int fd = raw_request(srv.port(), "POST", "/completion", body.dump());
  o->status = -1;
  if (k == Kind::LeaveWhileWaiting) {
    if (i % 2) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ::close(fd);
    o->ms = ms_since(t0);
    return;
  }
  std::string got;
  char buf[4096];
  size_t ev = std::string::npos, end = std::string::npos;
  while (end == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, size_t(n));
    ev = got.find("data: ");
    if (ev != std::string::npos) end = got.find("\n\n", ev);
  }
  ::close(fd);
  o->ms = ms_since(t0);
  if (got.rfind("HTTP/1.1 200", 0) != 0 || end == std::string::npos) {
    o->error = "no first event: " + got.substr(0, 300);
    return;
  }
  o->n_prompt = json::parse(got.substr(ev + 6, end - ev - 6)).at("tokens_evaluated");
}

bool busy_error(const HttpResult& r) {
  return r.status == 503 && r.body.is_object() && r.body["error"]["type"] == "unavailable_error" &&
         r.body["error"]["message"].get<std::string>().find("is busy") != std::string::npos;
}

Outcome run_one(const ServerProcess& srv, int i) {
  Outcome o;
  o.kind = kCycle[i % kCycleLen];
  const int p = (i / kCycleLen + i) % 8;
  const int slot = i % kSlots;
  const auto t0 = Clock::now();
  try {
    if (is_generation(o.kind)) {
      generate(srv, o.kind, p, &o);
    } else if (is_leave(o.kind)) {
      leave(srv, o.kind, i, p, t0, &o);
      return o;
    } else {
      auto c = srv.client(120);
      HttpResult r;
      const std::string action = "/slots/" + std::to_string(slot) + "?action=";
      switch (o.kind) {
        case Kind::Save: r = post(c, action + "save", {{"filename", "load-" + std::to_string(slot) + ".bin"}}); break;
        case Kind::Restore: r = post(c, action + "restore", {{"filename", "load-" + std::to_string((i / kCycleLen) % kSlots) + ".bin"}}); break;
        case Kind::Erase: r = post_raw(c, action + "erase", ""); break;
        case Kind::Metrics: r = get(c, "/metrics"); break;
        case Kind::Slots: r = get(c, "/slots"); break;
        default: r = get(c, "/slots/saved"); break;
      }
      o.status = r.status;
      const bool action_kind = o.kind == Kind::Save || o.kind == Kind::Restore || o.kind == Kind::Erase;
      if (r.status == 200) {
        if (o.kind == Kind::Save) o.n_bytes = r.body.at("n_written");
        if (o.kind == Kind::Restore) o.n_bytes = r.body.at("n_read");
        if (o.kind == Kind::Metrics && r.raw.find("\nllamacpp:requests_processing ") == std::string::npos) o.error = "metrics: " + r.raw.substr(0, 200);
        if (o.kind == Kind::Slots && r.body.size() != size_t(kSlots)) o.error = "slots: " + r.raw.substr(0, 200);
        if (o.kind == Kind::SavedList)
          for (const auto& e : r.body)
            if (e.at("valid") != true) o.error = "an invalid saved state listed: " + e.dump();
      } else if (!(action_kind && busy_error(r))) {
        o.error = "status " + std::to_string(r.status) + ": " + r.raw.substr(0, 300);
      }
    }
    if (is_generation(o.kind) && o.status != 200) o.error = "status " + std::to_string(o.status);
  } catch (const std::exception& e) {
    o.error = std::string("bad answer: ") + e.what();
  }
  o.ms = ms_since(t0);
  return o;
}

std::vector<Outcome> run_phase(const ServerProcess& srv, int first, int n, int concurrency) {
  std::vector<Outcome> out(static_cast<size_t>(n));
  std::atomic<int> next{0};
  std::vector<std::thread> th;
  for (int t = 0; t < concurrency; ++t)
    th.emplace_back([&] {
      for (int k; (k = next.fetch_add(1)) < n;) out[size_t(k)] = run_one(srv, first + k);
    });
  for (auto& t : th) t.join();
  return out;
}

double rss_bytes(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) * 1024.0;  // "VmRSS:  12345 kB"
  return -1;
}

std::map<std::string, double> scrape(httplib::Client& c) {
  std::map<std::string, double> m;
  const HttpResult r = get(c, "/metrics");
  size_t i = 0;
  while (i < r.raw.size()) {
    size_t e = r.raw.find('\n', i);
    if (e == std::string::npos) e = r.raw.size();
    const std::string line = r.raw.substr(i, e - i);
    i = e + 1;
    const size_t sp = line.find(' ');
    if (line.empty() || line[0] == '#' || sp == std::string::npos) continue;
    m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return m;
}

// Waits (bounded) until /slots shows every slot idle; returns the last /slots.
json wait_all_idle(httplib::Client& c) {
  json s;
  for (int i = 0; i < 3000; ++i) {
    s = get(c, "/slots").body;
    bool idle = s.is_array() && s.size() == size_t(kSlots);
    for (const auto& e : s) idle = idle && e["is_processing"] == false;
    if (idle) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return s;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))];
}

TEST(ServerLoad, MixedTrafficWithDisconnectsAndSlotChurn) {
  Config cfg;
  cfg.n_requests = env_int("KVSTASH_LOAD_REQUESTS", cfg.n_requests);
  cfg.concurrency = env_int("KVSTASH_LOAD_CONCURRENCY", cfg.concurrency);
  TempDir saves;
  // --slot-wait-ms: a slot action queues behind the generations that came before it (first come,
  // first served), up to ~1.5 s under ThreadSanitizer; past the bound it would get 503.
  std::map<std::string, std::string> env;
#if defined(__SANITIZE_ADDRESS__)
  const char* asan = std::getenv("ASAN_OPTIONS");
  env["ASAN_OPTIONS"] = (asan && *asan ? std::string(asan) + ":" : std::string()) + "quarantine_size_mb=16";
#endif
  ServerProcess srv({"-np", std::to_string(kSlots), "-c", std::to_string(kSlots * 2048), "--metrics", "--slot-save-path", saves.path(),
                     "--slot-wait-ms", "10000", "--slot-save-no-fsync"},
                    env);
  srv.start();
  auto c = srv.client();

  // Seed: a saved state per slot, so that every restore has a file to read.
  for (int s = 0; s < kSlots; ++s) {
    ASSERT_EQ(post(c, "/completion", {{"prompt", kPrompts[s]}, {"n_predict", 8}, {"id_slot", s}, {"temperature", 0}}).status, 200);
    ASSERT_EQ(post(c, "/slots/" + std::to_string(s) + "?action=save", {{"filename", "load-" + std::to_string(s) + ".bin"}}).status, 200);
  }
  // Warm-up: the same mix, so that threads, arenas and buffers exist before the RSS baseline.
  const int n_warm = std::max(2 * kCycleLen, cfg.concurrency * 2);
  const std::vector<Outcome> warm = run_phase(srv, 0, n_warm, cfg.concurrency);
  for (const auto& o : warm) EXPECT_EQ(o.error, "") << "warm-up " << kind_name(o.kind);
  wait_all_idle(c);
  const double rss_warm = rss_bytes(srv.pid());
  const std::map<std::string, double> m0 = scrape(c);

  const auto t0 = Clock::now();
  const std::vector<Outcome> run = run_phase(srv, n_warm, cfg.n_requests, cfg.concurrency);
  const double wall_s = ms_since(t0) / 1000.0;
  int n_gen = 0, n_leave = 0;
  for (const auto& o : run) {
    n_gen += is_generation(o.kind) || is_leave(o.kind);
    n_leave += is_leave(o.kind);
  }
  // A client that left before its request was read may still sit in the server's accept queue
  // or HTTP queue when the last answer arrives: wait (bounded) until every request was taken.
  std::map<std::string, double> m1 = scrape(c);
  for (int i = 0; i < 1500; ++i) {
    if (m1["kvstash:requests_total"] - m0.at("kvstash:requests_total") >= n_gen &&
        m1["kvstash:requests_cancelled_total"] - m0.at("kvstash:requests_cancelled_total") >= n_leave && m1["llamacpp:requests_processing"] == 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    m1 = scrape(c);
  }
  const json slots = wait_all_idle(c);
  const double rss_end = rss_bytes(srv.pid());
  m1 = scrape(c);
  ASSERT_TRUE(srv.running()) << srv.log();

  // ---- the figures ----
  std::map<std::pair<int, int>, int> by_status;  // (kind, status) -> count
  std::vector<std::vector<double>> lat(kKinds);
  std::map<std::string, int> failures;
  for (const auto& o : run) {
    ++by_status[{int(o.kind), o.status}];
    if (o.error.empty()) lat[size_t(o.kind)].push_back(o.ms);
    else ++failures[std::string(kind_name(o.kind)) + ": " + o.error.substr(0, 160)];
  }
  std::printf("[ load ] %d requests, %d concurrent clients, %d slots: %.2f s wall, %.0f requests/s\n", cfg.n_requests, cfg.concurrency,
              kSlots, wall_s, cfg.n_requests / wall_s);
  std::printf("[ load ] %-22s %5s %-44s %8s %8s\n", "kind", "n", "answers", "p50 ms", "p99 ms");
  for (int k = 0; k < kKinds; ++k) {
    std::string answers;
    int n = 0;
    for (const auto& [ks, count] : by_status) {
      if (ks.first != k) continue;
      n += count;
      const int st = ks.second;
      answers += (answers.empty() ? "" : ", ") + std::to_string(count) + " x " +
                 (st == -1 ? std::string("left") : st == 0 ? std::string("no connection") : std::to_string(st));
    }
    if (n == 0) continue;
    std::printf("[ load ] %-22s %5d %-44s %8.1f %8.1f\n", kind_name(Kind(k)), n, answers.c_str(), percentile(lat[size_t(k)], 0.50),
                percentile(lat[size_t(k)], 0.99));
  }
  std::printf("[ load ] server RSS after warm-up %.1f MiB, after the run %.1f MiB (%+.2f MiB; margin %.0f MiB)\n", rss_warm / kMiB,
              rss_end / kMiB, (rss_end - rss_warm) / kMiB, kRssMarginBytes / kMiB);
  for (const auto& [what, count] : failures) ADD_FAILURE() << count << " x " << what;

  // ---- greedy answers agree ----
  std::map<int, std::set<std::string>> texts;
  for (const auto& o : run)
    if (o.error.empty() && o.group >= 0 && o.status == 200) texts[o.group].insert(o.content);
  for (const auto& [group, set] : texts) EXPECT_EQ(set.size(), 1u) << "prompt group " << group << " got different greedy texts";

  // ---- lifecycle ----
  ASSERT_EQ(slots.size(), size_t(kSlots)) << slots.dump();
  int cached = 0;
  for (const auto& s : slots) {
    EXPECT_EQ(s["is_processing"], false) << s.dump();
    cached += s["n_cached_tokens"].get<int>();
  }
  EXPECT_EQ(get(c, "/health").body["slots_idle"], kSlots);
  EXPECT_LE(rss_end - rss_warm, kRssMarginBytes) << "RSS grew from " << rss_warm << " to " << rss_end << " bytes";

  // ---- metrics moved by exactly what was sent ----
  auto delta = [&](const std::string& name) {
    EXPECT_TRUE(m0.count(name) && m1.count(name)) << name;
    return m1.count(name) && m0.count(name) ? m1.at(name) - m0.at(name) : -1.0;
  };
  int saves_ok = 0, saves_busy = 0, restores_ok = 0, restores_busy = 0, erases_ok = 0;
  double predicted = 0, prompt_min = 0, prompt_max = 0, written = 0, read = 0;
  for (const auto& o : run) {
    if (is_generation(o.kind) && o.status == 200) {
      predicted += o.predicted_n;
      prompt_min += o.prompt_n + o.cache_n;
      prompt_max += o.prompt_n + o.cache_n;
    }
    if (o.kind == Kind::LeaveMidStream) {
      prompt_min += o.n_prompt;
      prompt_max += o.n_prompt;
    }
    if (o.kind == Kind::LeaveWhileWaiting) prompt_max += 16;  // its prompt is at most 8 words
    if (o.kind == Kind::Save) {
      (o.status == 200 ? saves_ok : saves_busy) += 1;
      written += double(o.n_bytes);
    }
    if (o.kind == Kind::Restore) {
      (o.status == 200 ? restores_ok : restores_busy) += 1;
      read += double(o.n_bytes);
    }
    if (o.kind == Kind::Erase) erases_ok += o.status == 200;
  }
  EXPECT_EQ(delta("kvstash:requests_total"), n_gen);
  EXPECT_EQ(delta("kvstash:requests_cancelled_total"), n_leave);
  EXPECT_EQ(delta("llamacpp:tokens_predicted_total"), predicted);
  const double prompt = delta("llamacpp:prompt_tokens_total") + delta("kvstash:prompt_tokens_cached_total");
  EXPECT_GE(prompt, prompt_min);
  EXPECT_LE(prompt, prompt_max);
  EXPECT_EQ(delta("kvstash:slot_saves_total"), saves_ok);
  EXPECT_EQ(delta("kvstash:slot_saves_failed_total"), saves_busy);
  EXPECT_EQ(delta("kvstash:slot_restores_total"), restores_ok);
  EXPECT_EQ(delta("kvstash:slot_restores_failed_total"), restores_busy);
  EXPECT_EQ(delta("kvstash:slot_erases_total"), erases_ok);
  EXPECT_EQ(delta("kvstash:slot_save_bytes_written_total"), written);
  EXPECT_EQ(delta("kvstash:slot_restore_bytes_read_total"), read);
  EXPECT_EQ(m1.at("llamacpp:requests_processing"), 0);
  EXPECT_EQ(m1.at("llamacpp:requests_deferred"), 0);
  EXPECT_EQ(m1.at("llamacpp:kv_cache_tokens"), cached);

  EXPECT_EQ(srv.stop(), 0) << srv.log();
}

}  // namespace
}  // namespace kvstash::test
