// The fault-injection matrix (docs/reliability.md): every file operation of a save and of a
// restore, failed at every call number with ENOSPC, EIO or a short transfer, through the FileIo
// seam (src/state/fault_io.h). For each case: the caller gets an error with a message; no partial
// file exists under the final name; a previous file of that name is intact (or, when only the
// directory sync after the rename failed, the new file is complete and the error says so); no
// temporary file is left; a failed restore leaves the slot's cache exactly as it was.
// Run the binary with --gtest_filter='FaultMatrix*' to see the matrix printed.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/slot_state.h"
#include "model/model.h"
#include "state/fault_io.h"
#include "state/state.h"
#include "state_fixtures.h"
#include "model_fixture.h"
#include "test_paths.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;
using test::fill_cells;
using test::listing;
using test::slurp_bytes;

const Model& stories() { return test::stories_model(); }

std::unique_ptr<KvCache> stories_cache(uint32_t n_cells) {
  auto l = stories().kv_layout(n_cells, DType::F16, DType::F16);
  if (!l.is_ok()) throw std::runtime_error(l.status().to_string());
  return std::make_unique<KvCache>(std::move(l).value());
}

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// ---- rule language ----

TEST(FaultRules, ParseAndPrint) {
  auto r = parse_fault_rules("write:3:ENOSPC,fsync:1+:EIO,pread:2:short,dirsync:7:EXDEV");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[0].op, IoOp::Write);
  EXPECT_EQ((*r)[0].nth, 3u);
  EXPECT_FALSE((*r)[0].and_after);
  EXPECT_EQ((*r)[0].err, ENOSPC);
  EXPECT_TRUE((*r)[1].and_after);
  EXPECT_EQ((*r)[1].err, EIO);
  EXPECT_EQ((*r)[2].err, 0);
  EXPECT_TRUE((*r)[1].matches(1) && (*r)[1].matches(9) && !(*r)[0].matches(4) && (*r)[0].matches(3));
  EXPECT_EQ(fault_rules_to_string(*r), "write:3:ENOSPC,fsync:1+:EIO,pread:2:short,dirsync:7:EXDEV");
  for (const char* bad : {"", "write", "write:3", "write:0:EIO", "write:-1:EIO", "write:x:EIO", "seek:1:EIO", "write:1:EWHAT",
                          "fsync:1:short", "write:99999999999999999999999:EIO", ",,"}) {
    auto b = parse_fault_rules(bad);
    EXPECT_EQ(b.status().code(), StatusCode::InvalidArgument) << bad;
    EXPECT_FALSE(b.status().message().empty());
  }
}

TEST(FaultRules, CountsCallsAndFiresOnlyTheNamedOne) {
  const fs::path p = fs::temp_directory_path() / ("kvstash_faultio_" + std::to_string(::getpid()));
  FaultIo io(*parse_fault_rules("write:2:EIO,write:4+:ENOSPC"));
  const int fd = io.open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  const char buf[8] = "abcdefg";
  EXPECT_EQ(io.write(fd, buf, 8), 8);
  errno = 0;
  EXPECT_EQ(io.write(fd, buf, 8), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(io.write(fd, buf, 8), 8);
  EXPECT_EQ(io.write(fd, buf, 8), -1);
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_EQ(io.write(fd, buf, 8), -1);
  EXPECT_EQ(io.calls(IoOp::Write), 5u);
  EXPECT_EQ(io.n_injected(), 3u);
  EXPECT_EQ(io.close(fd), 0);
  EXPECT_EQ(fs::file_size(p), 16u);
  fs::remove(p);
}

// ---- saves ----

constexpr IoOp kSaveOps[] = {IoOp::Open, IoOp::Write, IoOp::Fsync, IoOp::Close, IoOp::Rename, IoOp::DirOpen, IoOp::DirSync};

struct Counts {
  uint64_t n[kNumIoOps] = {};
};

class FaultMatrix : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvstash_fault_matrix_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    cache_ = stories_cache(128);
    fill_cells(*cache_, 0, 0, 24, 1);   // the saved-before state
    fill_cells(*cache_, 1, 24, 40, 2);  // the state saved over it
  }
  void TearDown() override {
    install_default_file_io(nullptr);
    fs::remove_all(dir_);
  }
  Result<StateSaveResult> save(SeqId seq, FileIo* io, bool durable) {
    StateSaveOptions o;
    o.durable = durable;
    o.created_ms = 7;
    o.io = io;
    return state_save_seq_file(*cache_, seq, stories().fingerprint(), path().string(), o);
  }
  fs::path path() const { return dir_ / "slot.kvs"; }
  // One row of the printed matrix.
  static void report(const std::string& op, const std::string& fault, int n_cases, int n_ok, const std::set<std::string>& outcomes) {
    std::string all;
    for (const std::string& o : outcomes) all += (all.empty() ? "" : " | ") + o;
    std::printf("  %-9s %-7s %4d calls  %4d/%-4d as expected  %s\n", op.c_str(), fault.c_str(), n_cases, n_ok, n_cases, all.c_str());
  }

  fs::path dir_;
  std::unique_ptr<KvCache> cache_;
};

TEST_F(FaultMatrix, EverySaveFaultKeepsThePreviousFileOrCompletesTheNewOne) {
  for (const bool durable : {true, false}) {
    std::printf("save matrix, %s:\n", durable ? "durable (fsync + rename + directory fsync)" : "no fsync (rename only)");
    ASSERT_TRUE(save(0, nullptr, durable).is_ok());
    const std::vector<uint8_t> old_bytes = slurp_bytes(path());
    // A clean run through a FaultIo with no rules counts the calls of each operation; writes are
    // capped at 1 KiB so the file takes many write calls.
    FaultIo counter(std::vector<FaultRule>{});
    counter.set_max_write(1024);
    ASSERT_TRUE(save(1, &counter, durable).is_ok());
    const std::vector<uint8_t> new_bytes = slurp_bytes(path());
    ASSERT_NE(old_bytes, new_bytes);
    ASSERT_GE(counter.calls(IoOp::Write), 20u);
    EXPECT_EQ(counter.calls(IoOp::Rename), 1u);
    EXPECT_EQ(counter.calls(IoOp::Fsync), durable ? 1u : 0u);
    EXPECT_EQ(counter.calls(IoOp::DirSync), durable ? 1u : 0u);
    EXPECT_EQ(counter.calls(IoOp::Unlink), 0u);

    for (const IoOp op : kSaveOps) {
      for (const int err : {ENOSPC, EIO, 0}) {
        if (err == 0 && op != IoOp::Write) continue;  // only transfers can be short
        const uint64_t n_calls = counter.calls(op);
        if (n_calls == 0) continue;
        int n_ok = 0;
        std::set<std::string> outcomes;
        for (uint64_t n = 1; n <= n_calls; ++n) {
          std::string outcome;
          ASSERT_TRUE(save(0, nullptr, durable).is_ok());  // the previous file
          FaultIo io({{op, n, false, err}});
          io.set_max_write(1024);
          auto r = save(1, &io, durable);
          const std::string where = std::string(io_op_name(op)) + " call " + std::to_string(n) + " " + (err ? std::strerror(err) : "short");
          ASSERT_EQ(io.n_injected(), 1u) << where;
          // The directory fd is closed after its fsync, whose result the save has already.
          const bool after_rename = op == IoOp::DirOpen || op == IoOp::DirSync;
          const bool harmless = err == 0 || (op == IoOp::Close && n == 2);
          bool ok;
          if (harmless) {
            // A short write is retried; a failed close of the synced directory changes nothing.
            ok = r.is_ok() && slurp_bytes(path()) == new_bytes;
            outcome = err == 0 ? "retried: the save completes, new file exact" : "close of the synced directory: save completes";
          } else if (after_rename) {
            ok = !r.is_ok() && r.status().code() == StatusCode::IO && has(r.status().message(), "durability not guaranteed") &&
                 slurp_bytes(path()) == new_bytes;
            outcome = "error (IO, 'durability not guaranteed'); new file complete";
          } else {
            const bool full = err == ENOSPC;
            ok = !r.is_ok() && r.status().code() == (full ? StatusCode::ResourceExhausted : StatusCode::IO) &&
                 has(r.status().message(), std::strerror(err)) && has(r.status().message(), "slot.kvs") && slurp_bytes(path()) == old_bytes;
            outcome = std::string("error (") + (full ? "ResourceExhausted -> HTTP 507" : "IO -> HTTP 500") + "); previous file intact";
          }
          ok = ok && listing(dir_) == std::set<std::string>{"slot.kvs"};
          EXPECT_TRUE(ok) << where << ": expected " << outcome << "; got " << (r.is_ok() ? "success" : r.status().to_string())
                          << ", " << listing(dir_).size() << " files";
          n_ok += ok;
          outcomes.insert(outcome);
        }
        report(io_op_name(op), err ? (err == ENOSPC ? "ENOSPC" : "EIO") : "short", int(n_calls), n_ok, outcomes);
      }
    }
  }
}

TEST_F(FaultMatrix, ShortWriteThenFullDiskIsRefusedAndKeepsThePreviousFile) {
  ASSERT_TRUE(save(0, nullptr, true).is_ok());
  const std::vector<uint8_t> old_bytes = slurp_bytes(path());
  for (uint64_t n : {1u, 3u, 7u}) {
    FaultIo io(*parse_fault_rules("write:" + std::to_string(n) + ":short,write:" + std::to_string(n + 1) + "+:ENOSPC"));
    io.set_max_write(1024);
    auto r = save(1, &io, true);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::ResourceExhausted);
    EXPECT_TRUE(has(r.status().message(), "No space left on device")) << r.status().message();
    EXPECT_EQ(slurp_bytes(path()), old_bytes);
    EXPECT_EQ(listing(dir_), std::set<std::string>{"slot.kvs"});
  }
}

TEST_F(FaultMatrix, FailedCleanupLeavesOnlyATempFileThatTheNextStartRemoves) {
  ASSERT_TRUE(save(0, nullptr, true).is_ok());
  const std::vector<uint8_t> old_bytes = slurp_bytes(path());
  FaultIo io(*parse_fault_rules("write:2:EIO,unlink:1:EIO"));
  io.set_max_write(1024);
  auto r = save(1, &io, true);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(slurp_bytes(path()), old_bytes);
  const std::set<std::string> files = listing(dir_);
  ASSERT_EQ(files.size(), 2u);
  const std::string tmp = *std::next(files.begin(), files.begin()->front() == '.' ? 0 : 1);
  EXPECT_EQ(tmp.rfind(".slot.kvs.kvstash-tmp." + std::to_string(::getpid()) + ".", 0), 0u) << tmp;
  // The temp file belongs to a live writer (us), so cleanup keeps it; once the writer is gone
  // (a restart), it is removed. Simulate the restart by renaming it to a dead PID's name.
  EXPECT_EQ(state_cleanup_temp_files(dir_.string()), 0);
  const pid_t dead = [] {
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    int st = 0;
    ::waitpid(pid, &st, 0);
    return pid;
  }();
  fs::rename(dir_ / tmp, dir_ / (".slot.kvs.kvstash-tmp." + std::to_string(dead) + ".0"));
  EXPECT_EQ(state_cleanup_temp_files(dir_.string()), 1);
  EXPECT_EQ(listing(dir_), std::set<std::string>{"slot.kvs"});
}

// ---- restores, through the slot path the server uses (slot_state_restore, default_file_io) ----

constexpr IoOp kRestoreOps[] = {IoOp::Open, IoOp::Fstat, IoOp::Pread, IoOp::Close};

// Rows of seq `a` in `x` equal rows of seq `b` in `y`, position by position.
void expect_same_sequence(const KvCache& x, SeqId a, const KvCache& y, SeqId b, const std::string& where) {
  ASSERT_EQ(x.seq_n_cells(a), y.seq_n_cells(b)) << where;
  const KvLayout& L = x.layout();
  for (int32_t pos = 0; pos < int32_t(x.seq_n_cells(a)); ++pos) {
    const int64_t cx = x.find_cell(a, pos), cy = y.find_cell(b, pos);
    ASSERT_GE(cx, 0) << where;
    ASSERT_GE(cy, 0) << where;
    ASSERT_EQ(x.cell_token(uint32_t(cx)), y.cell_token(uint32_t(cy))) << where;
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si)
        ASSERT_EQ(0, std::memcmp(x.row(il, si, uint32_t(cx)), y.row(il, si, uint32_t(cy)), L.layer(il).streams[si].row_bytes)) << where;
  }
}

TEST_F(FaultMatrix, EveryRestoreFaultLeavesTheSlotUnchanged) {
  ASSERT_TRUE(save(1, nullptr, false).is_ok());
  const int32_t n_vocab = int32_t(stories().hparams().n_vocab);
  // The target: slot 0 holds another prompt, slot 2 a third; free cells in between.
  auto target = stories_cache(128);
  fill_cells(*target, 0, 0, 10, 5);
  fill_cells(*target, 2, 60, 7, 6);
  const test::Snapshot before = test::snapshot(*target);

  FaultIo counter(std::vector<FaultRule>{});
  install_default_file_io(&counter);
  {
    auto probe = stories_cache(128);
    auto r = slot_state_restore(*probe, 0, stories().fingerprint(), n_vocab, 128, path().string());
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    expect_same_sequence(*probe, 0, *cache_, 1, "clean restore");
  }
  install_default_file_io(nullptr);
  ASSERT_GE(counter.calls(IoOp::Pread), 8u);
  std::printf("restore matrix (slot_state_restore, %llu preads per restore):\n", static_cast<unsigned long long>(counter.calls(IoOp::Pread)));

  for (const IoOp op : kRestoreOps) {
    for (const int err : {EIO, ENOENT, EINTR, 0}) {
      if (err == 0 && op != IoOp::Pread) continue;
      if (err == ENOENT && op != IoOp::Open) continue;
      if (err == EINTR && op != IoOp::Pread) continue;
      const uint64_t n_calls = counter.calls(op);
      int n_ok = 0;
      std::set<std::string> outcomes;
      for (uint64_t n = 1; n <= n_calls; ++n) {
        std::string outcome;
        auto t = stories_cache(128);
        fill_cells(*t, 0, 0, 10, 5);
        fill_cells(*t, 2, 60, 7, 6);
        FaultIo io({{op, n, false, err}});
        install_default_file_io(&io);
        auto r = slot_state_restore(*t, 0, stories().fingerprint(), n_vocab, 128, path().string());
        install_default_file_io(nullptr);
        const std::string where = std::string(io_op_name(op)) + " call " + std::to_string(n) + " " + (err ? std::strerror(err) : "short");
        ASSERT_EQ(io.n_injected(), 1u) << where;
        // A short or interrupted read is retried; a failed close of the finished file is harmless.
        const bool harmless = err == 0 || err == EINTR || op == IoOp::Close;
        bool ok;
        if (harmless) {
          ok = r.is_ok();
          if (ok) expect_same_sequence(*t, 0, *cache_, 1, where);
          ok = ok && !::testing::Test::HasFatalFailure();
          outcome = "retried or harmless: restore completes, rows exact";
        } else {
          ok = !r.is_ok() && r.status().code() == (err == ENOENT ? StatusCode::NotFound : StatusCode::IO) &&
               has(r.status().message(), std::strerror(err)) && test::unchanged(*t, before);
          outcome = std::string("error (") + (err == ENOENT ? "NotFound -> HTTP 400" : "IO -> HTTP 500") + "); slot unchanged";
        }
        EXPECT_TRUE(ok) << where << ": expected " << outcome << "; got " << (r.is_ok() ? "success" : r.status().to_string());
        n_ok += ok;
        outcomes.insert(outcome);
      }
      report(io_op_name(op), err == 0 ? "short" : err == EIO ? "EIO" : err == ENOENT ? "ENOENT" : "EINTR", int(n_calls), n_ok, outcomes);
    }
  }
}

}  // namespace
}  // namespace kvstash
