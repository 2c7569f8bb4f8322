// Continuous batching over parallel slots is exact: 16 concurrent streaming clients over 4 slots
// each produce what they produce alone (greedy), with prefill chunked and interleaved with the
// decoding of others; a client that disconnects frees its slot at once.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
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

TEST(ServerConcurrency, DisconnectedStreamFreesItsSlot) {
  ServerProcess srv({"-np", "1", "-c", "32768"});
  srv.start();
  const int fd = raw_request(srv.port(), "POST", "/completion",
                             json({{"prompt", "Once upon a time"}, {"n_predict", -1}, {"ignore_eos", true}, {"stream", true}}).dump());
  char buf[4096];
  size_t got = 0;
  while (got < 2000) {  // headers and a few events: generation is under way
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    got += size_t(n);
  }
  auto c = srv.client();
  EXPECT_EQ(get(c, "/slots").body[0]["is_processing"], true);
  ::close(fd);
  const auto t0 = std::chrono::steady_clock::now();
  bool idle = false;
  while (!idle && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
    idle = get(c, "/slots").body[0]["is_processing"] == false;
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(idle) << "the slot stayed busy after the client left";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  HttpResult r = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 4}, {"temperature", 0}});
  EXPECT_EQ(r.status, 200) << r.raw;
}

}  // namespace
}  // namespace kvstash::test
