// Hostile input: path traversal, symlink escape, absurd values, malformed JSON, missing or wrong
// API keys, oversized bodies, slot actions on a busy slot. Each gets its documented 4xx/5xx
// answer in llama.cpp's error envelope, and the server stays up.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "server_harness.h"

namespace kvstash::test {
namespace {

namespace fs = std::filesystem;

void expect_error(const HttpResult& r, int status, const std::string& type, const std::string& fragment = "") {
  EXPECT_EQ(r.status, status) << r.raw;
  ASSERT_TRUE(r.body.is_object()) << r.raw;
  ASSERT_TRUE(r.body.contains("error")) << r.raw;
  EXPECT_EQ(r.body["error"]["code"], status) << r.raw;
  EXPECT_EQ(r.body["error"]["type"], type) << r.raw;
  EXPECT_TRUE(r.body["error"]["message"].is_string()) << r.raw;
  if (!fragment.empty()) {
    EXPECT_NE(r.raw.find(fragment), std::string::npos) << r.raw;
  }
}

void expect_alive(httplib::Client& c) {
  EXPECT_EQ(get(c, "/health").status, 200);
  HttpResult r = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 4}, {"temperature", 0}});
  EXPECT_EQ(r.status, 200) << r.raw;
}

TEST(ServerHostile, PathTraversalFilenamesAreRefused) {
  TempDir saves, outside;
  { std::ofstream(outside / "canary") << "keep me"; }
  ServerProcess srv({"--slot-save-path", saves.path()});
  srv.start();
  auto c = srv.client();
  c.set_url_encode(false);
  const std::string rel_canary = "../" + fs::path(outside.path()).filename().string() + "/canary";
  const std::vector<std::string> bad = {
      "", ".", "..", "../x.bin", rel_canary, "a/b", "a\\b", "/etc/passwd", " x", "x ", "x.", "a:b", "a*b", "a?b", "a\"b", "a<b",
      "a>b", "a|b", "a\x01" "b", "a\x7f" "b", std::string(256, 'a'), "a\xe2\x88\x95" "b" /* U+2215 */,
      "a\xef\xbc\x8e" "b" /* U+FF0E */, "\xef\xbb\xbf" "x" /* BOM */, ".x.kvstash-tmp.1"};
  for (const auto& name : bad) {
    SCOPED_TRACE(name);
    expect_error(post(c, "/slots/0?action=save", {{"filename", name}}), 400, "invalid_request_error", "Invalid filename");
    expect_error(post(c, "/slots/0?action=restore", {{"filename", name}}), 400, "invalid_request_error", "Invalid filename");
  }
  // Invalid UTF-8 cannot even be carried by JSON; it reaches the filename rules through the URL.
  for (const std::string raw : {"{\"filename\":\"\xff\"}", "{\"filename\":\"\xc0\xaf\"}", "{\"filename\":\"\\ud800\"}"})
    expect_error(post_raw(c, "/slots/0?action=save", raw), 400, "invalid_request_error");
  for (const std::string p : {"/slots/saved/%FF", "/slots/saved/%C0%AF", "/slots/saved/a%00b"})
    expect_error(del(c, p), 400, "invalid_request_error", "Invalid filename");
  // Allowed by llama.cpp's rules: a leading dot, unicode, spaces inside.
  for (const std::string name : {".hidden", "caf\xc3\xa9 state.bin", "a b"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(post(c, "/slots/0?action=save", {{"filename", name}}).status, 200);
  }
  // Traversal through the management routes, percent-encoded or not.
  for (const std::string p : {"/slots/saved/..%2F..%2Fetc%2Fpasswd", "/slots/saved/../x", "/slots/saved/%2e%2e"}) {
    SCOPED_TRACE(p);
    HttpResult d = del(c, p);
    EXPECT_TRUE(d.status == 400 || d.status == 404) << d.raw;
  }
  expect_error(del(c, "/slots/saved/" + rel_canary), 400, "invalid_request_error");
  expect_error(post(c, "/slots/saved/.hidden?action=rename", {{"filename", "../escaped"}}), 400, "invalid_request_error", "Invalid filename");
  expect_error(post(c, "/slots/saved/.hidden?action=rename", {{"filename", rel_canary}}), 400, "invalid_request_error", "Invalid filename");
  EXPECT_TRUE(fs::exists(outside / "canary"));
  EXPECT_FALSE(fs::exists(fs::path(saves.path()).parent_path() / "escaped"));
  expect_alive(c);
}

TEST(ServerHostile, SymlinksCannotLeadOutOfTheSaveDirectory) {
  TempDir saves, outside;
  ServerProcess srv({"--slot-save-path", saves.path()});
  srv.start();
  auto c = srv.client();
  ASSERT_EQ(post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 4}, {"temperature", 0}, {"id_slot", 0}}).status, 200);
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "real.bin"}}).status, 200);
  fs::copy_file(saves / "real.bin", outside / "secret.bin");
  const auto secret_size = fs::file_size(outside / "secret.bin");
  fs::create_symlink(outside / "secret.bin", saves / "evil.bin");
  fs::create_symlink(outside.path(), saves / "evil_dir");
  fs::create_symlink(saves / "real.bin", saves / "alias.bin");

  expect_error(post(c, "/slots/0?action=restore", {{"filename", "evil.bin"}}), 400, "invalid_request_error", "outside");
  expect_error(post(c, "/slots/0?action=save", {{"filename", "evil.bin"}}), 400, "invalid_request_error", "outside");
  expect_error(del(c, "/slots/saved/evil.bin"), 400, "invalid_request_error", "outside");
  expect_error(post(c, "/slots/saved/evil.bin?action=rename", {{"filename", "fine.bin"}}), 400, "invalid_request_error", "outside");
  expect_error(post(c, "/slots/0?action=restore", {{"filename", "evil_dir"}}), 400, "invalid_request_error");
  EXPECT_EQ(fs::file_size(outside / "secret.bin"), secret_size);
  EXPECT_TRUE(fs::is_symlink(saves / "evil.bin"));

  // A link that stays inside is followed.
  HttpResult ok = post(c, "/slots/1?action=restore", {{"filename", "alias.bin"}});
  EXPECT_EQ(ok.status, 200) << ok.raw;
  // The listing reports the escaping link instead of reading through it.
  HttpResult list = get(c, "/slots/saved");
  ASSERT_EQ(list.status, 200);
  bool saw_evil = false;
  for (const auto& e : list.body) {
    if (e["filename"] == "evil.bin") {
      saw_evil = true;
      EXPECT_EQ(e["valid"], false);
      EXPECT_NE(e["error"].get<std::string>().find("outside"), std::string::npos);
    }
  }
  EXPECT_TRUE(saw_evil) << list.raw;
  expect_alive(c);
}

TEST(ServerHostile, AbsurdValuesAndWrongTypesGet400) {
  ServerProcess srv({"-np", "2", "-c", "512"});
  srv.start();
  auto c = srv.client();
  const std::vector<json> bodies = {
      {{"prompt", "x"}, {"n_predict", 1000000000}},
      {{"prompt", "x"}, {"n_predict", -5}},
      {{"prompt", "x"}, {"n_predict", 1.5}},
      {{"prompt", "x"}, {"n_predict", "24"}},
      {{"prompt", "x"}, {"max_tokens", true}},
      {{"prompt", "x"}, {"n_probs", 1000}},
      {{"prompt", "x"}, {"n_probs", -1}},
      {{"prompt", "x"}, {"n_probs", 1000000000}},
      {{"prompt", "x"}, {"max_tokens", 1000000000}},
      {{"prompt", "x"}, {"n", 1000000000}},
      {{"prompt", "x"}, {"n_predict", 1000000000000ll}},
      {{"prompt", "x"}, {"top_k", -5}},
      {{"prompt", "x"}, {"top_p", 2}},
      {{"prompt", "x"}, {"min_p", -1}},
      {{"prompt", "x"}, {"temperature", "hot"}},
      {{"prompt", "x"}, {"temperature", 1e300}},
      {{"prompt", "x"}, {"repeat_penalty", 0}},
      {{"prompt", "x"}, {"repeat_last_n", -2}},
      {{"prompt", "x"}, {"seed", -3}},
      {{"prompt", "x"}, {"seed", "42"}},
      {{"prompt", "x"}, {"id_slot", 2}},
      {{"prompt", "x"}, {"id_slot", -2}},
      {{"prompt", "x"}, {"stop", 5}},
      {{"prompt", "x"}, {"stop", json::array({"a", 1})}},
      {{"prompt", "x"}, {"stop", std::vector<std::string>(100, "a")}},
      {{"prompt", "x"}, {"stop", std::string(1000, 'a')}},
      {{"prompt", "x"}, {"stream", "yes"}},
      {{"prompt", "x"}, {"cache_prompt", 1}},
      {{"prompt", "x"}, {"grammar", "root ::= \"a\""}},
      {{"prompt", "x"}, {"mirostat", 2}},
      {{"prompt", "x"}, {"n", 2}},
      {{"prompt", json::array({1, -1})}},
      {{"prompt", json::array({1, 512})}},
      {{"prompt", json::array({1, 2.5})}},
      {{"prompt", json::array({1, nullptr})}},
      {{"prompt", json::object()}},
      {{"prompt", 42}},
      {{"prompt", json::array()}},
      {{"n_predict", 4}},
      {{"prompt", std::vector<std::string>(17, "x")}},
  };
  for (const auto& b : bodies) {
    SCOPED_TRACE(b.dump().substr(0, 200));
    HttpResult r = post(c, "/completion", b);
    EXPECT_EQ(r.status, 400) << r.raw;
    EXPECT_EQ(r.body["error"]["code"], 400) << r.raw;
  }
  // A prompt longer than the slot context (512 / 2 = 256): mainline's exceed_context_size_error.
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "cat ";
  HttpResult r = post(c, "/completion", {{"prompt", long_prompt}});
  expect_error(r, 400, "exceed_context_size_error");
  EXPECT_EQ(r.body["error"]["n_ctx"], 256);
  EXPECT_GE(r.body["error"]["n_prompt_tokens"].get<int>(), 256);
  std::vector<int> many(400, 100);
  r = post(c, "/completion", {{"prompt", many}});
  expect_error(r, 400, "exceed_context_size_error");
  EXPECT_EQ(r.body["error"]["n_prompt_tokens"], 400);
  r = post(c, "/completion", {{"prompt", std::string(8 << 20, 'a')}});  // 8 MB: refused without tokenizing it
  expect_error(r, 400, "exceed_context_size_error");
  // Chat, tokenizer and slot endpoints.
  for (const auto& b : {json{{"messages", "hi"}}, json{{"messages", json::array()}}, json{{"messages", json::array({{{"content", "x"}}})}},
                        json{{"messages", json::array({{{"role", "user"}, {"content", 5}}})}},
                        json{{"messages", json::array({{{"role", "user"}, {"content", json::array({{{"type", "image_url"}}})}}})}}})
    expect_error(post(c, "/v1/chat/completions", b), 400, "invalid_request_error");
  expect_error(post(c, "/tokenize", {{"content", 5}}), 400, "invalid_request_error");
  expect_error(post(c, "/detokenize", {{"tokens", json::array({-1})}}), 400, "invalid_request_error");
  expect_error(post(c, "/detokenize", {{"tokens", json::array({1 << 30})}}), 400, "invalid_request_error");
  expect_error(post(c, "/detokenize", {{"tokens", "1,2"}}), 400, "invalid_request_error");
  expect_alive(c);
}

TEST(ServerHostile, MalformedJsonAndOversizedBodies) {
  TempDir saves;
  ServerProcess srv({"--max-body-size", "65536", "--slot-save-path", saves.path()});
  srv.start();
  auto c = srv.client();
  const std::vector<std::string> bodies = {"", "   ", "{", "{\"prompt\": }", "{\"prompt\": \"x\",}", "[1,2", "nul", "\"just a string\"",
                                           "[]", "null", "{\"prompt\": \"\xff\xfe\"}", std::string(10000, '[') + std::string(10000, ']'),
                                           "{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}"};
  for (const char* path : {"/completion", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/slots/0?action=save"}) {
    for (const auto& b : bodies) {
      SCOPED_TRACE(std::string(path) + " <- " + b.substr(0, 40));
      HttpResult r = post_raw(c, path, b);
      EXPECT_EQ(r.status, 400) << r.raw;
      EXPECT_EQ(r.body["error"]["type"], "invalid_request_error") << r.raw;
    }
  }
  HttpResult big = post(c, "/completion", {{"prompt", std::string(100000, 'a')}});
  EXPECT_EQ(big.status, 413) << big.raw;
  EXPECT_EQ(big.body["error"]["code"], 413) << big.raw;
  expect_error(get(c, "/no/such/route"), 404, "not_found_error");
  expect_alive(c);
}

TEST(ServerHostile, ApiKeysGuardEverythingButHealthAndModels) {
  TempDir keys;
  { std::ofstream(keys / "keys.txt") << "# comment\n  file-key  \n\nother # trailing comment\n"; }
  ServerProcess srv({"--api-key", "k1,k2", "--api-key-file", keys / "keys.txt", "--slot-save-path", keys.path(), "--metrics"});
  srv.start();
  auto c = srv.client();
  EXPECT_EQ(get(c, "/health").status, 200);
  EXPECT_EQ(get(c, "/v1/models").status, 200);
  EXPECT_EQ(get(c, "/models").status, 200);
  const json prompt = {{"prompt", "Once"}, {"n_predict", 2}, {"temperature", 0}};
  const HttpResult missing = post(c, "/completion", prompt);
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(missing.body, json({{"error", {{"code", 401}, {"message", "Invalid API Key"}, {"type", "authentication_error"}}}}));
  for (const httplib::Headers& h : {httplib::Headers{{"Authorization", "Bearer nope"}}, httplib::Headers{{"X-Api-Key", "k3"}},
                                    httplib::Headers{{"Authorization", "k1"}}, httplib::Headers{{"Authorization", "Bearer k1x"}},
                                    httplib::Headers{{"Authorization", "Bearer "}}}) {
    expect_error(post(c, "/completion", prompt, h), 401, "authentication_error", "Invalid API Key");
    expect_error(post(c, "/slots/0?action=save", {{"filename", "x.bin"}}, h), 401, "authentication_error");
    expect_error(post_raw(c, "/slots/0?action=erase", "", h), 401, "authentication_error");
    expect_error(get(c, "/slots", h), 401, "authentication_error");
    expect_error(get(c, "/slots/saved", h), 401, "authentication_error");
    expect_error(get(c, "/metrics", h), 401, "authentication_error");
    expect_error(get(c, "/props", h), 401, "authentication_error");
    expect_error(post(c, "/v1/chat/completions", {{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}}, h), 401,
                 "authentication_error");
  }
  for (const httplib::Headers& h : {httplib::Headers{{"Authorization", "Bearer k1"}}, httplib::Headers{{"X-Api-Key", "k2"}},
                                    httplib::Headers{{"Authorization", "Bearer file-key"}}, httplib::Headers{{"X-Api-Key", "other"}}}) {
    EXPECT_EQ(post(c, "/completion", prompt, h).status, 200);
    EXPECT_EQ(get(c, "/slots", h).status, 200);
    EXPECT_EQ(post(c, "/slots/0?action=save", {{"filename", "x.bin"}}, h).status, 200);
  }
  // The environment variable works too.
  ServerProcess env_srv({}, {{"LLAMA_API_KEY", "from-env"}});
  env_srv.start();
  auto e = env_srv.client();
  EXPECT_EQ(get(e, "/props").status, 401);
  EXPECT_EQ(get(e, "/props", {{"Authorization", "Bearer from-env"}}).status, 200);
}

TEST(ServerHostile, SlotActionsWaitForABusySlotWithABound) {
  TempDir saves;
  ServerProcess srv({"-np", "1", "-c", "32768", "--slot-save-path", saves.path(), "--slot-wait-ms", "1500"});
  srv.start();
  auto c = srv.client();
  ASSERT_EQ(post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 8}, {"temperature", 0}}).status, 200);
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "before.bin"}}).status, 200);

  auto busy = [&] {
    const int fd = raw_request(srv.port(), "POST", "/completion",
                               json({{"prompt", "The little girl"}, {"n_predict", -1}, {"ignore_eos", true}, {"stream", true}}).dump());
    char buf[4096];
    size_t n = 0;
    while (n < 2000) {
      const ssize_t k = ::recv(fd, buf, sizeof buf, 0);
      if (k <= 0) break;
      n += size_t(k);
    }
    return fd;
  };
  using Clock = std::chrono::steady_clock;
  // 1) Past the bound: 503, for all three actions at once.
  {
    const int fd = busy();
    const auto t0 = Clock::now();
    auto save = std::async(std::launch::async, [&] { auto cc = srv.client(); return post(cc, "/slots/0?action=save", {{"filename", "during.bin"}}); });
    auto restore = std::async(std::launch::async, [&] { auto cc = srv.client(); return post(cc, "/slots/0?action=restore", {{"filename", "before.bin"}}); });
    auto erase = std::async(std::launch::async, [&] { auto cc = srv.client(); return post_raw(cc, "/slots/0?action=erase", ""); });
    for (auto* f : {&save, &restore, &erase}) {
      HttpResult r = f->get();
      expect_error(r, 503, "unavailable_error", "busy");
    }
    EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(1400));
    EXPECT_EQ(get(c, "/slots").body[0]["is_processing"], true);
    ::close(fd);
  }
  // 2) Within the bound: the action waits until the slot is idle, then runs.
  {
    while (get(c, "/slots").body[0]["is_processing"] == true) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const int fd = busy();
    const auto t0 = Clock::now();
    auto save = std::async(std::launch::async, [&] { auto cc = srv.client(); return post(cc, "/slots/0?action=save", {{"filename", "after.bin"}}); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(save.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout) << "the save did not wait for the busy slot";
    ::close(fd);  // the client leaves: the slot becomes idle
    HttpResult r = save.get();
    EXPECT_EQ(r.status, 200) << r.raw;
    EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(300));
    EXPECT_GT(r.body["n_saved"].get<int>(), 4);
  }
  HttpResult m = get(c, "/slots");
  EXPECT_EQ(m.body[0]["is_processing"], false);
  expect_alive(c);
}

TEST(ServerHostile, FailedRestoreLeavesTheSlotAsItWas) {
  TempDir saves;
  ServerProcess srv({"-np", "2", "-c", "1024", "--slot-save-path", saves.path()});
  srv.start();
  auto c = srv.client();
  const json req = {{"prompt", "Once upon a time"}, {"n_predict", 8}, {"temperature", 0}, {"id_slot", 0}, {"return_tokens", true}};
  HttpResult first = post(c, "/completion", req);
  ASSERT_EQ(first.status, 200);
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "good.bin"}}).status, 200);
  const auto size = fs::file_size(saves / "good.bin");
  {  // truncated copy, flipped byte, garbage, empty
    std::ifstream in(saves / "good.bin", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(saves / "truncated.bin", std::ios::binary) << bytes.substr(0, size / 2);
    std::string flipped = bytes;
    flipped[size / 2] ^= 0x5a;
    std::ofstream(saves / "flipped.bin", std::ios::binary) << flipped;
    std::ofstream(saves / "garbage.bin", std::ios::binary) << "definitely not a state file";
    std::ofstream(saves / "empty.bin", std::ios::binary);
  }
  const int cached = get(c, "/slots").body[0]["n_cached_tokens"];
  for (const std::string name : {"truncated.bin", "flipped.bin", "garbage.bin", "empty.bin", "missing.bin"}) {
    SCOPED_TRACE(name);
    HttpResult r = post(c, "/slots/0?action=restore", {{"filename", name}});
    expect_error(r, 400, "invalid_request_error", "Unable to restore slot: ");
    EXPECT_GT(r.body["error"]["message"].get<std::string>().size(), std::string("Unable to restore slot: ").size() + 5);
    EXPECT_EQ(get(c, "/slots").body[0]["n_cached_tokens"], cached);
  }
  // The cache is intact: the same request reuses it and continues identically.
  HttpResult again = post(c, "/completion", req);
  EXPECT_LE(again.body["timings"]["prompt_n"].get<int>(), 1);
  EXPECT_EQ(again.body["tokens"], first.body["tokens"]);
}

TEST(ServerHostile, SlotActionsWithoutSavePathAre501) {
  ServerProcess srv({"--no-slots"});
  srv.start();
  auto c = srv.client();
  for (const auto& action : {"save", "restore"})
    expect_error(post(c, std::string("/slots/0?action=") + action, {{"filename", "x.bin"}}), 501, "not_supported_error", "--slot-save-path");
  expect_error(post_raw(c, "/slots/0?action=erase", ""), 501, "not_supported_error", "--slot-save-path");
  expect_error(get(c, "/slots/saved"), 501, "not_supported_error");
  expect_error(del(c, "/slots/saved/x.bin"), 501, "not_supported_error");
  expect_error(get(c, "/slots"), 501, "not_supported_error");
  expect_error(get(c, "/metrics"), 501, "not_supported_error", "--metrics");
  expect_error(post(c, "/props", json::object()), 501, "not_supported_error");
  expect_alive(c);
}

TEST(ServerHostile, BadSlotIdsAndActions) {
  TempDir saves;
  ServerProcess srv({"-np", "2", "--slot-save-path", saves.path()});
  srv.start();
  auto c = srv.client();
  for (const std::string id : {"abc", "-1", "1.5", "0x1", "99999999999999999999"})
    expect_error(post(c, "/slots/" + id + "?action=save", {{"filename", "x.bin"}}), 400, "invalid_request_error", "Invalid slot ID");
  expect_error(post(c, "/slots/0?action=explode", {{"filename", "x.bin"}}), 400, "invalid_request_error", "Invalid action");
  expect_error(post(c, "/slots/0", {{"filename", "x.bin"}}), 400, "invalid_request_error", "Invalid action");
  expect_error(post(c, "/slots/0?action=save", json::object()), 400, "invalid_request_error", "filename");
  expect_error(post(c, "/slots/0?action=save", {{"filename", 7}}), 400, "invalid_request_error", "filename");
  // llama.cpp takes the id modulo the slot count.
  HttpResult wrap = post(c, "/slots/3?action=save", {{"filename", "x.bin"}});
  EXPECT_EQ(wrap.status, 200) << wrap.raw;
  EXPECT_EQ(wrap.body["id_slot"], 1);
  expect_alive(c);
}

}  // namespace
}  // namespace kvstash::test
