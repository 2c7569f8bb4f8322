// Continuous batching over parallel slots is exact: 16 concurrent streaming clients over 4 slots
// each produce what they produce alone (greedy), with prefill chunked and interleaved with the
// decoding of others; a client that disconnects, streaming or not, running or queued, frees its
// slot within the decode step that was running.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "server_harness.h"

namespace kvstash::test {
namespace {

const char* kOpenings[16] = {
    "Once upon a time",          "The little girl",          "One day, a big dog",        "Tom and Sue went to",
    "There was a cat named",     "In the park, a boy",       "The sun was shining and",   "Mom said to Lily",
    "A small bird sat on",       "Ben liked to play with",   "It was a rainy day, so",    "The old man had a",
    "Anna found a shiny",        "The fish swam in the",     "Max wanted to build a",     "At night, the moon",
};

struct Generation {
  std::vector<int> tokens;
  std::string content;
};

Generation solo(httplib::Client& c, const std::string& prompt, int n_predict) {
  HttpResult r = post(c, "/completion", {{"prompt", prompt}, {"n_predict", n_predict}, {"temperature", 0}, {"cache_prompt", false},
                                         {"return_tokens", true}});
  EXPECT_EQ(r.status, 200) << r.raw;
  return {r.body["tokens"].get<std::vector<int>>(), r.body["content"]};
}

Generation streamed(const ServerProcess& srv, const std::string& prompt, int n_predict, std::string* error) {
  // 16 clients connect at once; cpp-httplib listens with a small backlog, so a connection can be
  // refused before the server ever sees the request. That is not what this test is about: retry
  // a failed connection (status 0, nothing received) a few times.
  HttpResult r;
  for (int attempt = 0; attempt < 4; ++attempt) {
    auto c = srv.client();
    r = post(c, "/completion", {{"prompt", prompt}, {"n_predict", n_predict}, {"temperature", 0}, {"stream", true}});
    if (r.status != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Generation out;
  if (r.status != 200) {
    *error = "status " + std::to_string(r.status) + ": " + r.raw;
    return out;
  }
  try {
    const auto events = sse_payloads(r.raw);
    for (size_t i = 0; i < events.size(); ++i) {
      const json e = json::parse(events[i]);
      if (e.value("stop", false)) {
        if (i + 1 != events.size()) *error = "events after the final one";
        if (e["tokens_predicted"] != n_predict) *error = "tokens_predicted " + e["tokens_predicted"].dump();
        break;
      }
      for (int t : e["tokens"]) out.tokens.push_back(t);
      out.content += e["content"].get<std::string>();
    }
  } catch (const std::exception& ex) {
    *error = ex.what();
  }
  return out;
}

TEST(ServerConcurrency, SixteenStreamingClientsOverFourSlotsMatchSoloGreedy) {
  constexpr int kPredict = 48;
  std::vector<Generation> alone(16);
  {
    ServerProcess ref({"-np", "1", "-c", "256"});
    ref.start();
    auto c = ref.client();
    for (int i = 0; i < 16; ++i) alone[size_t(i)] = solo(c, kOpenings[i], kPredict);
  }
  ServerProcess srv({"-np", "4", "-c", "1024", "--metrics"});
  srv.start();
  std::vector<Generation> got(16);
  std::vector<std::string> errors(16);
  std::vector<std::thread> th;
  for (int i = 0; i < 16; ++i)
    th.emplace_back([&, i] { got[size_t(i)] = streamed(srv, kOpenings[i], kPredict, &errors[size_t(i)]); });
  for (auto& t : th) t.join();
  for (int i = 0; i < 16; ++i) {
    SCOPED_TRACE(kOpenings[i]);
    EXPECT_EQ(errors[size_t(i)], "");
    EXPECT_EQ(got[size_t(i)].tokens.size(), size_t(kPredict));
    EXPECT_EQ(got[size_t(i)].tokens, alone[size_t(i)].tokens);
    EXPECT_EQ(got[size_t(i)].content, alone[size_t(i)].content);
  }
  // The slots really shared forward passes.
  auto c = srv.client();
  const std::string m = get(c, "/metrics").raw;
  const std::string key = "\nllamacpp:n_busy_slots_per_decode ";
  const auto at = m.find(key);
  ASSERT_NE(at, std::string::npos) << m;
  EXPECT_GT(std::stod(m.substr(at + key.size())), 1.5) << m;
  EXPECT_EQ(srv.stop(), 0) << srv.log();
}

// -b 8: a 40-token prompt is prefilled in chunks of at most 8 tokens, interleaved with the
// decoding of the other slots; outputs still match a server that evaluates prompts whole.
TEST(ServerConcurrency, ChunkedPrefillInterleavedWithDecodingIsExact) {
  std::vector<std::string> prompts;
  for (int i = 0; i < 4; ++i)
    prompts.push_back(std::string(kOpenings[i]) + ". " + kOpenings[i + 4] + ". " + kOpenings[i + 8] + ". " + kOpenings[i + 12] + ".");
  std::vector<Generation> alone;
  {
    ServerProcess ref({"-np", "1", "-c", "512"});
    ref.start();
    auto c = ref.client();
    for (const auto& p : prompts) alone.push_back(solo(c, p, 32));
  }
  ServerProcess srv({"-np", "4", "-c", "1024", "-b", "8", "-ub", "4"});
  srv.start();
  std::vector<Generation> got(prompts.size());
  std::vector<std::string> errors(prompts.size());
  std::vector<std::thread> th;
  for (size_t i = 0; i < prompts.size(); ++i) {
    th.emplace_back([&, i] { got[i] = streamed(srv, prompts[i], 32, &errors[i]); });
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // staggered: later prefills meet earlier decodes
  }
  for (auto& t : th) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(errors[i], "");
    EXPECT_EQ(got[i].tokens, alone[i].tokens) << prompts[i];
  }
}

int64_t monotonic_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double metric_value(const std::string& text, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const auto at = text.find(key);
  return at == std::string::npos ? -1.0 : std::stod(text.substr(at + key.size()));
}

// A client leaves in the middle of a long generation (`body`, on a raw socket, after reading
// `read_first` bytes of the response): its slot must be freed within the decode step that was
// running. The scheduler asks every request's socket before it builds a batch and stamps each
// step before asking (t_last_decode_us, CLOCK_MONOTONIC like steady_clock here), so the slot's
// last step must have begun before close() returned: no step that began after the client left
// carried its tokens. Loopback delivers the FIN (or RST) within close().
void expect_freed_within_one_step(const std::string& path, const json& body, size_t read_first) {
  ServerProcess srv({"-np", "1", "-c", "32768", "--metrics"});
  srv.start();
  auto c = srv.client();
  const int fd = raw_request(srv.port(), "POST", path, body.dump());
  char buf[4096];
  size_t got = 0;
  while (got < read_first) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    got += size_t(n);
  }
  // Generating: wait until it has decoded a few tokens (n_predict is far away).
  json slot;
  for (int i = 0; i < 2000; ++i) {
    slot = get(c, "/slots").body[0];
    if (slot["is_processing"] == true && slot["next_token"][0]["n_decoded"].get<int>() >= 32) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(slot["is_processing"], true) << slot.dump();
  ASSERT_GE(slot["next_token"][0]["n_decoded"].get<int>(), 32) << slot.dump();
  EXPECT_EQ(slot["cancelled"], false);
  ::close(fd);
  const int64_t t_closed_us = monotonic_us();
  for (int i = 0; i < 1000 && slot["is_processing"] == true; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    slot = get(c, "/slots").body[0];
  }
  const int64_t t_idle_seen_us = monotonic_us();
  ASSERT_EQ(slot["is_processing"], false) << "the slot stayed busy after its client left: " << slot.dump();
  EXPECT_EQ(slot["cancelled"], true);
  EXPECT_LT(slot["t_last_decode_us"].get<int64_t>(), t_closed_us)
      << "a decode step that began " << slot["t_last_decode_us"].get<int64_t>() - t_closed_us << " us after close() carried the slot";
  const int n_decoded = slot["next_token"][0]["n_decoded"];
  EXPECT_LT(n_decoded, 20000);
  std::printf("[ disconnect ] %s: freed after %d tokens in %d steps; slot seen idle %.1f ms after close()\n", path.c_str(), n_decoded,
              slot["n_decode_steps"].get<int>(), double(t_idle_seen_us - t_closed_us) / 1000.0);
  // Nothing more is decoded for it, and the metrics count it as cancelled, not predicted.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const json later = get(c, "/slots").body[0];
  EXPECT_EQ(later["next_token"][0]["n_decoded"], n_decoded);
  EXPECT_EQ(later["n_decode_steps"], slot["n_decode_steps"]);
  const std::string m = get(c, "/metrics").raw;
  EXPECT_EQ(metric_value(m, "kvstash:requests_cancelled_total"), 1) << m;
  EXPECT_EQ(metric_value(m, "kvstash:requests_total"), 1) << m;
  EXPECT_EQ(metric_value(m, "llamacpp:tokens_predicted_total"), 0) << m;
  EXPECT_EQ(metric_value(m, "llamacpp:requests_processing"), 0) << m;
  // The slot serves the same request again, reusing its cache: the prompt is followed by the
  // tokens generated before the client left, so only the last prompt token is recomputed.
  json again = body;
  again["stream"] = false;
  again[path == "/completion" ? "n_predict" : "max_tokens"] = 4;
  HttpResult r = post(c, path, again);
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["timings"]["prompt_n"], 1) << r.raw;
  EXPECT_GE(r.body["timings"]["cache_n"].get<int>(), 4) << r.raw;
  EXPECT_EQ(srv.stop(), 0) << srv.log();
}

TEST(ServerConcurrency, DisconnectedStreamFreesItsSlotWithinOneDecodeStep) {
  const json body = {{"messages", json::array({{{"role", "user"}, {"content", "Once upon a time"}}})},
                     {"max_tokens", 20000}, {"ignore_eos", true}, {"stream", true}};
  expect_freed_within_one_step("/v1/chat/completions", body, 1000);
}

// Non-streaming requests too: nothing is written until the end, so only the socket tells.
TEST(ServerConcurrency, DisconnectedNonStreamingClientFreesItsSlotWithinOneDecodeStep) {
  const json body = {{"prompt", "Once upon a time"}, {"n_predict", 20000}, {"ignore_eos", true}};
  expect_freed_within_one_step("/completion", body, 0);
}

// A client that leaves while its request waits for a slot never gets one.
TEST(ServerConcurrency, DisconnectedQueuedClientNeverTakesASlot) {
  ServerProcess srv({"-np", "1", "-c", "32768", "--metrics"});
  srv.start();
  auto c = srv.client();
  const int busy = raw_request(srv.port(), "POST", "/completion", json({{"prompt", "Once upon a time"}, {"n_predict", 20000}, {"ignore_eos", true}}).dump());
  for (int i = 0; i < 2000 && get(c, "/slots").body[0]["is_processing"] != true; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const int queued = raw_request(srv.port(), "POST", "/completion", json({{"prompt", "The little girl"}, {"n_predict", 8}}).dump());
  std::string m;
  for (int i = 0; i < 2000 && metric_value(m, "llamacpp:requests_deferred") != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    m = get(c, "/metrics").raw;
  }
  ASSERT_EQ(metric_value(m, "llamacpp:requests_deferred"), 1) << m;
  ::close(queued);
  for (int i = 0; i < 2000 && metric_value(m, "kvstash:requests_cancelled_total") != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    m = get(c, "/metrics").raw;
  }
  EXPECT_EQ(metric_value(m, "kvstash:requests_cancelled_total"), 1) << m;
  const json slot = get(c, "/slots").body[0];
  EXPECT_EQ(slot["is_processing"], true);
  EXPECT_EQ(slot["n_prompt_tokens"], 5) << "the queued request took the slot";  // still the first request
  ::close(busy);
  bool idle = false;
  for (int i = 0; i < 1000 && !idle; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    idle = get(c, "/slots").body[0]["is_processing"] == false;
  }
  ASSERT_TRUE(idle) << "the slot stayed busy after its client left";
  m = get(c, "/metrics").raw;
  EXPECT_EQ(metric_value(m, "kvstash:requests_cancelled_total"), 2) << m;
  EXPECT_EQ(metric_value(m, "kvstash:requests_total"), 2) << m;
  EXPECT_EQ(srv.stop(), 0) << srv.log();
}

}  // namespace
}  // namespace kvstash::test
