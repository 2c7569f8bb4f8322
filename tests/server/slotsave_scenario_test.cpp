// ik_llama.cpp's slot-save scenario (examples/server/tests/features/slotsave.feature), greedy, on
// stories260K, as ../shared/reference/slotsave-scenario.md describes; and the same state
// surviving a server restart.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>

#include "server_harness.h"

namespace kvstash::test {
namespace {

namespace fs = std::filesystem;

json completion(httplib::Client& c, const json& body) {
  json b = body;
  b["n_predict"] = b.value("n_predict", 24);
  b["cache_prompt"] = true;
  b["temperature"] = 0;
  b["return_tokens"] = true;
  HttpResult r = post(c, "/completion", b);
  EXPECT_EQ(r.status, 200) << r.raw;
  return r.body;
}

const char* kFrance = "What is the capital of France?";
const char* kGermany = "What is the capital of Germany?";

TEST(SlotSaveScenario, SaveRestoreIntoTheOtherSlot) {
  TempDir saves;
  ServerProcess srv({"-np", "2", "-c", "2048", "--slot-save-path", saves.path(), "--seed", "42"});
  srv.start();
  auto c = srv.client();

  // 1: all 21 prompt tokens computed (ik_llama.cpp: 21); continuation A.
  json a = completion(c, {{"prompt", kFrance}, {"id_slot", 1}});
  EXPECT_EQ(a["timings"]["prompt_n"], 21);
  EXPECT_EQ(a["timings"]["cache_n"], 0);
  EXPECT_EQ(a["tokens_evaluated"], 21);
  EXPECT_EQ(a["tokens_predicted"], 24);
  EXPECT_EQ(a["tokens_cached"], 44);
  EXPECT_EQ(a["id_slot"], 1);
  const std::string text_a = a["content"];
  ASSERT_FALSE(text_a.empty());

  // 2: save: n_saved = tokens in the slot (21 + 24 - 1: the last sampled token is not evaluated).
  HttpResult s = post(c, "/slots/1?action=save", {{"filename", "slot1.bin"}});
  ASSERT_EQ(s.status, 200) << s.raw;
  EXPECT_EQ(s.body["id_slot"], 1);
  EXPECT_EQ(s.body["filename"], "slot1.bin");
  EXPECT_EQ(s.body["n_saved"], 44);
  ASSERT_TRUE(fs::exists(saves / "slot1.bin"));
  EXPECT_EQ(s.body["n_written"].get<uint64_t>(), fs::file_size(saves / "slot1.bin"));
  EXPECT_TRUE(s.body["timings"]["save_ms"].is_number());

  // 3: only the differing suffix is computed (ik_llama.cpp: 6); continuation B.
  json b = completion(c, {{"prompt", kGermany}, {"id_slot", 1}});
  EXPECT_EQ(b["timings"]["prompt_n"], 6);
  EXPECT_EQ(b["timings"]["cache_n"], 16);  // BOS + "What is the capital of "
  EXPECT_EQ(b["tokens_evaluated"], 22);
  const std::string text_b = b["content"];
  EXPECT_NE(text_a, text_b);

  // 4: restore into slot 0.
  HttpResult r = post(c, "/slots/0?action=restore", {{"filename", "slot1.bin"}});
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["id_slot"], 0);
  EXPECT_EQ(r.body["filename"], "slot1.bin");
  EXPECT_EQ(r.body["n_restored"], 44);
  EXPECT_EQ(r.body["n_read"].get<uint64_t>(), fs::file_size(saves / "slot1.bin"));
  EXPECT_TRUE(r.body["timings"]["restore_ms"].is_number());

  // 5: at most one prompt token computed in slot 0; the continuation is A exactly.
  json a2 = completion(c, {{"prompt", kFrance}, {"id_slot", 0}});
  EXPECT_LE(a2["timings"]["prompt_n"].get<int>(), 1);
  EXPECT_EQ(a2["timings"]["cache_n"].get<int>() + a2["timings"]["prompt_n"].get<int>(), 21);
  EXPECT_EQ(a2["content"], text_a);
  EXPECT_EQ(a2["tokens"], a["tokens"]);

  // 6: slot 1 was not disturbed by the restore into slot 0.
  json b2 = completion(c, {{"prompt", kGermany}, {"id_slot", 1}});
  EXPECT_LE(b2["timings"]["prompt_n"].get<int>(), 1);
  EXPECT_EQ(b2["content"], text_b);
  EXPECT_EQ(b2["tokens"], b["tokens"]);
  EXPECT_EQ(srv.stop(), 0) << srv.log();
}

TEST(SlotSaveScenario, EraseForcesFullRecompute) {
  TempDir saves;
  ServerProcess srv({"-np", "2", "-c", "2048", "--slot-save-path", saves.path(), "--seed", "42"});
  srv.start();
  auto c = srv.client();
  json a = completion(c, {{"prompt", kFrance}, {"id_slot", 1}});
  EXPECT_EQ(a["timings"]["prompt_n"], 21);
  HttpResult e = post_raw(c, "/slots/1?action=erase", "");
  ASSERT_EQ(e.status, 200) << e.raw;
  EXPECT_EQ(e.body, json({{"id_slot", 1}, {"n_erased", 44}}));
  json a2 = completion(c, {{"prompt", kFrance}, {"id_slot", 1}});
  EXPECT_EQ(a2["timings"]["prompt_n"], 21);
  EXPECT_EQ(a2["timings"]["cache_n"], 0);
  EXPECT_EQ(a2["content"], a["content"]);
}

// Save, kill -9, start a new server on the same directory, restore, continue: the same output
// as without the restart, and no prompt token recomputed.
TEST(SlotSaveScenario, RestoreAfterRestartContinuesIdentically) {
  TempDir saves;
  const std::vector<std::string> args = {"-np", "2", "-c", "1024", "--slot-save-path", saves.path()};
  std::vector<int> prompt;
  json conv, conv_next, exact_next;
  {
    ServerProcess srv(args);
    srv.start();
    auto c = srv.client();
    prompt = post(c, "/tokenize", {{"content", "Once upon a time, a little dog"}, {"add_special", true}}).body["tokens"].get<std::vector<int>>();
    // A conversation turn in slot 0, saved.
    conv = completion(c, {{"prompt", prompt}, {"id_slot", 0}, {"n_predict", 16}});
    ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "conv.bin"}}).status, 200);
    // Its continuation without a restart: the prompt is the conversation so far.
    std::vector<int> whole = prompt;
    for (int t : conv["tokens"]) whole.push_back(t);
    conv_next = completion(c, {{"prompt", whole}, {"id_slot", 0}, {"n_predict", 16}});
    // The last sampled token was never evaluated: exactly one new token to compute.
    EXPECT_EQ(conv_next["timings"]["prompt_n"], 1);
    EXPECT_EQ(conv_next["timings"]["cache_n"].get<size_t>(), whole.size() - 1);
    // A prompt evaluated alone (n_predict 0) is saved with its last logits...
    json ev = completion(c, {{"prompt", prompt}, {"id_slot", 1}, {"n_predict", 0}});
    EXPECT_EQ(ev["tokens_predicted"], 0);
    EXPECT_EQ(ev["tokens_cached"].get<size_t>(), prompt.size());
    ASSERT_EQ(post(c, "/slots/1?action=save", {{"filename", "prompt.bin"}}).status, 200);
    exact_next = completion(c, {{"prompt", prompt}, {"id_slot", 1}, {"n_predict", 16}});
    // ...so that the same prompt again needs no computation at all.
    EXPECT_EQ(exact_next["timings"]["prompt_n"], 0);
    EXPECT_EQ(exact_next["timings"]["cache_n"].get<size_t>(), prompt.size());
    EXPECT_EQ(exact_next["tokens"], conv["tokens"]);
    EXPECT_EQ(srv.stop(SIGKILL), 128 + SIGKILL);
  }
  ServerProcess srv(args);
  srv.start();
  auto c = srv.client();
  // Cross the slots on purpose.
  HttpResult r = post(c, "/slots/1?action=restore", {{"filename", "conv.bin"}});
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["n_restored"].get<size_t>(), prompt.size() + 15);
  std::vector<int> whole = prompt;
  for (int t : conv["tokens"]) whole.push_back(t);
  json next = completion(c, {{"prompt", whole}, {"id_slot", 1}, {"n_predict", 16}});
  EXPECT_EQ(next["timings"]["prompt_n"], 1);
  EXPECT_EQ(next["timings"]["cache_n"].get<size_t>(), whole.size() - 1);
  EXPECT_EQ(next["content"], conv_next["content"]);
  EXPECT_EQ(next["tokens"], conv_next["tokens"]);

  ASSERT_EQ(post(c, "/slots/0?action=restore", {{"filename", "prompt.bin"}}).status, 200);
  json exact = completion(c, {{"prompt", prompt}, {"id_slot", 0}, {"n_predict", 16}});
  EXPECT_EQ(exact["timings"]["prompt_n"], 0);
  EXPECT_EQ(exact["timings"]["cache_n"].get<size_t>(), prompt.size());
  EXPECT_EQ(exact["tokens"], exact_next["tokens"]);
  EXPECT_EQ(exact["content"], exact_next["content"]);
  EXPECT_EQ(srv.stop(), 0) << srv.log();
}

}  // namespace
}  // namespace kvstash::test
