// File-system faults under the real server (KVSTASH_FAULTS, docs/reliability.md): a full disk is
// 507, other I/O failures 500, each with a message; the previous file of the name is intact; a
// restore that fails halfway leaves the slot's cache as it was; the server stays up throughout.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "server_harness.h"
#include "state_fixtures.h"

namespace kvstash::test {
namespace {

namespace fs = std::filesystem;

json complete(httplib::Client& c, const std::string& prompt, int slot) {
  HttpResult r = post(c, "/completion", {{"prompt", prompt}, {"n_predict", 12}, {"temperature", 0}, {"id_slot", slot}, {"cache_prompt", true}});
  EXPECT_EQ(r.status, 200) << r.raw;
  return r.body;
}

void expect_error(const HttpResult& r, int status, const std::string& type, const std::string& text) {
  EXPECT_EQ(r.status, status) << r.raw;
  EXPECT_EQ(r.body["error"]["code"], status) << r.raw;
  EXPECT_EQ(r.body["error"]["type"], type) << r.raw;
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find(text), std::string::npos) << r.raw;
}

TEST(ServerFaults, FailedSavesAnswer507Or500AndKeepThePreviousFile) {
  TempDir saves;
  // Save 1 succeeds; save 2 hits a full disk on its write; save 3 a failing fsync; save 4 a
  // failing rename; save 5 succeeds. (One write, fsync and rename per save of this small file.)
  ServerProcess srv({"-np", "2", "-c", "512", "--slot-save-path", saves.path()},
                    {{"KVSTASH_FAULTS", "write:2:ENOSPC,fsync:2:EIO,rename:2:EIO"}});
  srv.start();
  EXPECT_NE(srv.log().find("KVSTASH_FAULTS is set"), std::string::npos) << srv.log();
  auto c = srv.client();
  complete(c, "Once upon a time", 0);
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "a.bin"}}).status, 200);
  const std::vector<uint8_t> first = slurp_bytes(saves / "a.bin");
  ASSERT_FALSE(first.empty());
  complete(c, "The little dog ran to the park", 0);  // the slot now holds another prompt

  expect_error(post(c, "/slots/0?action=save", {{"filename", "a.bin"}}), 507, "server_error", "No space left on device");
  EXPECT_EQ(slurp_bytes(saves / "a.bin"), first);
  expect_error(post(c, "/slots/0?action=save", {{"filename", "a.bin"}}), 500, "server_error", "fsync of");
  EXPECT_EQ(slurp_bytes(saves / "a.bin"), first);
  expect_error(post(c, "/slots/0?action=save", {{"filename", "a.bin"}}), 500, "server_error", "cannot rename");
  EXPECT_EQ(slurp_bytes(saves / "a.bin"), first);
  EXPECT_EQ(listing(saves.path()), std::set<std::string>{"a.bin"}) << "a temporary or partial file was left";

  HttpResult ok = post(c, "/slots/0?action=save", {{"filename", "a.bin"}});
  ASSERT_EQ(ok.status, 200) << ok.raw;
  EXPECT_NE(slurp_bytes(saves / "a.bin"), first);
  EXPECT_EQ(ok.body["n_written"].get<uint64_t>(), fs::file_size(saves / "a.bin"));
  EXPECT_EQ(get(c, "/health").status, 200);
  EXPECT_EQ(srv.stop(), 0);
}

TEST(ServerFaults, RestoreThatFailsHalfwayLeavesTheSlotAsItWas) {
  TempDir saves;
  // Every read from the 6th on fails: the restore gets through the header and then loses the disk.
  ServerProcess srv({"-np", "2", "-c", "512", "--slot-save-path", saves.path()}, {{"KVSTASH_FAULTS", "pread:6+:EIO"}});
  srv.start();
  auto c = srv.client();
  complete(c, "Once upon a time", 0);
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "a.bin"}}).status, 200);
  const json before = complete(c, "The little dog ran to the park", 1);

  expect_error(post(c, "/slots/1?action=restore", {{"filename", "a.bin"}}), 500, "server_error", "Input/output error");
  // Slot 1 still holds its prompt: asking again recomputes at most one token and gives the same text.
  const json after = complete(c, "The little dog ran to the park", 1);
  EXPECT_LE(after["timings"]["prompt_n"].get<int>(), 1) << after.dump();
  EXPECT_EQ(after["content"], before["content"]);
  EXPECT_EQ(get(c, "/health").status, 200);
  EXPECT_EQ(srv.stop(), 0);
}

TEST(ServerFaults, AnInvalidFaultSpecificationStopsTheServerWithAMessage) {
  ServerProcess srv({}, {{"KVSTASH_FAULTS", "write:0:ENOSPC"}});
  EXPECT_EQ(srv.run_to_exit(), 1);
  EXPECT_NE(srv.log().find("call number must be a positive integer"), std::string::npos) << srv.log();
}

}  // namespace
}  // namespace kvstash::test
