// State files on disk (docs/state-format.md §6, §7): atomic and durable saves, injected I/O
// failures, cleanup of temporary files left by dead writers, a writer killed (SIGKILL) at every
// stage of a save never leaves a torn file, and the exact file size from the hyperparameters.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/context.h"
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

std::unique_ptr<KvCache> stories_cache(uint32_t n_cells, DType t) {
  auto l = stories().kv_layout(n_cells, t, t);
  if (!l.is_ok()) throw std::runtime_error(l.status().to_string());
  return std::make_unique<KvCache>(std::move(l).value());
}

std::vector<uint8_t> to_bytes(const KvCache& c, SeqId seq, StateSaveOptions o) {
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  auto r = state_write_seq(c, seq, stories().fingerprint(), o, sink);
  if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
  return out;
}

class StateFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvstash_state_file_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(StateFile, AtomicSaveLeavesOnlyTheFileDurableOrNot) {
  auto c = stories_cache(64, DType::F16);
  fill_cells(*c, 2, 0, 20, 1);
  for (bool durable : {true, false}) {
    StateSaveOptions o;
    o.durable = durable;
    o.created_ms = 42;
    const fs::path p = dir_ / (durable ? "durable.kvs" : "fast.kvs");
    auto r = state_save_seq_file(*c, 2, stories().fingerprint(), p.string(), o);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->n_tokens, 20u);
    EXPECT_EQ(r->n_bytes, fs::file_size(p));
    EXPECT_EQ(slurp_bytes(p), to_bytes(*c, 2, o));
    EXPECT_EQ((fs::status(p).permissions() & fs::perms::owner_read), fs::perms::owner_read);
  }
  EXPECT_EQ(listing(dir_), (std::set<std::string>{"durable.kvs", "fast.kvs"}));
  // And it loads back through FdSource.
  auto c2 = stories_cache(64, DType::F16);
  auto l = state_load_seq_file(*c2, 5, stories().fingerprint(), (dir_ / "durable.kvs").string(), {});
  ASSERT_TRUE(l.is_ok()) << l.status().to_string();
  EXPECT_EQ(c2->seq_n_cells(5), 20u);
  EXPECT_EQ(0, std::memcmp(c2->row(4, 1, 19), c->row(4, 1, 19), c->layout().layer(4).streams[1].row_bytes));
  auto missing = state_load_seq_file(*c2, 5, stories().fingerprint(), (dir_ / "nope.kvs").string(), {});
  EXPECT_EQ(missing.status().code(), StatusCode::NotFound);
  EXPECT_EQ(c2->seq_n_cells(5), 20u);
}

TEST_F(StateFile, OverwriteReplacesTheFileAtomically) {
  auto c = stories_cache(64, DType::F16);
  fill_cells(*c, 0, 0, 10, 1);
  fill_cells(*c, 1, 10, 30, 2);
  const fs::path p = dir_ / "slot.kvs";
  StateSaveOptions o;
  o.created_ms = 1;
  ASSERT_TRUE(state_save_seq_file(*c, 0, stories().fingerprint(), p.string(), o).is_ok());
  const std::vector<uint8_t> old_bytes = slurp_bytes(p);
  struct stat st_old;
  ASSERT_EQ(::stat(p.c_str(), &st_old), 0);
  std::ifstream reader(p, std::ios::binary);  // a reader that opened the old file
  ASSERT_TRUE(state_save_seq_file(*c, 1, stories().fingerprint(), p.string(), o).is_ok());
  struct stat st_new;
  ASSERT_EQ(::stat(p.c_str(), &st_new), 0);
  EXPECT_NE(st_old.st_ino, st_new.st_ino) << "the file was rewritten in place, not renamed over";
  EXPECT_EQ(std::vector<uint8_t>(std::istreambuf_iterator<char>(reader), {}), old_bytes) << "the old reader saw a mix";
  EXPECT_EQ(slurp_bytes(p), to_bytes(*c, 1, o));
  EXPECT_EQ(listing(dir_), std::set<std::string>{"slot.kvs"});
}

TEST_F(StateFile, SaveIntoAMissingDirectoryFailsWithIoAndLeavesNothing) {
  auto c = stories_cache(16, DType::F16);
  fill_cells(*c, 0, 0, 3, 1);
  const fs::path p = dir_ / "missing" / "slot.kvs";
  auto r = state_save_seq_file(*c, 0, stories().fingerprint(), p.string(), {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::IO);
  EXPECT_NE(r.status().message().find("cannot create"), std::string::npos) << r.status().message();
  EXPECT_FALSE(fs::exists(dir_ / "missing"));
  EXPECT_TRUE(listing(dir_).empty());
  // An invalid sequence id is refused before anything is created.
  auto bad = state_save_seq_file(*c, 64, stories().fingerprint(), (dir_ / "x.kvs").string(), {});
  EXPECT_EQ(bad.status().code(), StatusCode::InvalidArgument);
  EXPECT_TRUE(listing(dir_).empty());
}

TEST_F(StateFile, SaveOverASymlinkReplacesTheLinkNotItsTarget) {
  // anchors #14: a save must never write through a link to a file elsewhere.
  auto c = stories_cache(16, DType::F16);
  fill_cells(*c, 0, 0, 4, 1);
  const fs::path outside = dir_ / "outside";
  fs::create_directories(outside);
  const fs::path target = outside / "victim";
  std::ofstream(target) << "precious";
  fs::create_directories(dir_ / "slots");
  const fs::path link = dir_ / "slots" / "slot.kvs";
  fs::create_symlink(target, link);
  ASSERT_TRUE(state_save_seq_file(*c, 0, stories().fingerprint(), link.string(), {}).is_ok());
  std::ifstream t(target);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(t), {}), "precious");
  EXPECT_FALSE(fs::is_symlink(link));
  EXPECT_TRUE(fs::is_regular_file(link));
  auto c2 = stories_cache(16, DType::F16);
  EXPECT_TRUE(state_load_seq_file(*c2, 0, stories().fingerprint(), link.string(), {}).is_ok());
}

TEST_F(StateFile, FailedWritesFsyncsAndRenamesKeepThePreviousFile) {
  auto c = stories_cache(64, DType::F16);
  fill_cells(*c, 0, 0, 12, 1);
  fill_cells(*c, 1, 12, 25, 2);
  const fs::path p = dir_ / "slot.kvs";
  StateSaveOptions o;
  o.created_ms = 5;
  ASSERT_TRUE(state_save_seq_file(*c, 0, stories().fingerprint(), p.string(), o).is_ok());
  const std::vector<uint8_t> good = slurp_bytes(p);
  struct Case {
    IoOp op;
    int err;
    StatusCode code;
    const char* msg;
  };
  for (const Case& k : {Case{IoOp::Write, ENOSPC, StatusCode::ResourceExhausted, "No space"},
                        Case{IoOp::Write, EIO, StatusCode::IO, "write to"},
                        Case{IoOp::Fsync, EIO, StatusCode::IO, "fsync of"},
                        Case{IoOp::Rename, EXDEV, StatusCode::IO, "cannot rename"}}) {
    FaultIo io({{k.op, 1, true, k.err}});
    StateSaveOptions fo = o;
    fo.io = &io;
    auto r = state_save_seq_file(*c, 1, stories().fingerprint(), p.string(), fo);
    ASSERT_FALSE(r.is_ok()) << k.msg;
    EXPECT_EQ(r.status().code(), k.code) << r.status().message();
    EXPECT_NE(r.status().message().find(k.msg), std::string::npos) << r.status().message();
    EXPECT_EQ(slurp_bytes(p), good) << k.msg;
    EXPECT_EQ(listing(dir_), std::set<std::string>{"slot.kvs"}) << k.msg;
  }
  // A failed directory sync comes after the rename: the new file is complete, and the error says
  // durability is not guaranteed.
  FaultIo io({{IoOp::DirOpen, 1, true, EIO}});
  StateSaveOptions fo = o;
  fo.io = &io;
  auto r = state_save_seq_file(*c, 1, stories().fingerprint(), p.string(), fo);
  EXPECT_EQ(r.status().code(), StatusCode::IO);
  EXPECT_EQ(slurp_bytes(p), to_bytes(*c, 1, o));
  EXPECT_EQ(listing(dir_), std::set<std::string>{"slot.kvs"});
}

pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return pid;
}

void touch(const fs::path& p) { std::ofstream(p) << "partial"; }

TEST_F(StateFile, CleanupRemovesOnlyTempFilesOfDeadWriters) {
  const pid_t dead = dead_pid(), me = ::getpid(), parent = ::getppid();
  ASSERT_NE(::kill(dead, 0), 0);
  touch(dir_ / (".a.kvs.kvstash-tmp." + std::to_string(dead) + ".0"));
  touch(dir_ / (".b.kvs.kvstash-tmp." + std::to_string(dead) + ".17"));
  touch(dir_ / (".c.kvs.kvstash-tmp." + std::to_string(me) + ".3"));
  touch(dir_ / (".d.kvs.kvstash-tmp." + std::to_string(parent) + ".1"));
  touch(dir_ / "a.kvs");
  touch(dir_ / ("e.kvs.kvstash-tmp." + std::to_string(dead) + ".0"));  // no leading dot: not ours
  touch(dir_ / ".f.kvs.kvstash-tmp.notapid");
  EXPECT_EQ(state_cleanup_temp_files(dir_.string()), 2);
  EXPECT_EQ(listing(dir_), (std::set<std::string>{".c.kvs.kvstash-tmp." + std::to_string(me) + ".3",
                                                  ".d.kvs.kvstash-tmp." + std::to_string(parent) + ".1", "a.kvs",
                                                  "e.kvs.kvstash-tmp." + std::to_string(dead) + ".0", ".f.kvs.kvstash-tmp.notapid"}));
  EXPECT_EQ(state_cleanup_temp_files(dir_.string()), 0);
  EXPECT_EQ(state_cleanup_temp_files((dir_ / "missing").string()), 0);
}

// ---- a writer killed mid-save ----

enum class KillAt { FirstWrite, MidWrite, LastWrite, BeforeFsync, BeforeRename, AfterRename };
const char* kill_name(KillAt k) {
  switch (k) {
    case KillAt::FirstWrite: return "first write";
    case KillAt::MidWrite: return "middle of the 2nd write";
    case KillAt::LastWrite: return "middle of the last write";
    case KillAt::BeforeFsync: return "after the last write, before fsync";
    case KillAt::BeforeRename: return "after fsync, before rename";
    case KillAt::AfterRename: return "after rename, before the directory fsync";
  }
  return "?";
}

// SIGKILLs its own process at the chosen point of the armed save. Runs in the forked child only.
class KillIo final : public FileIo {
 public:
  KillIo(KillAt at, int n_writes) : at_(at), n_writes_(n_writes) {}
  bool armed = false;
  int open(const char* path, int flags, int mode) override { return posix_file_io().open(path, flags, mode); }
  long write(int fd, const void* buf, size_t n) override {
    if (armed) {
      ++writes_;
      if (at_ == KillAt::FirstWrite) ::raise(SIGKILL);
      if ((at_ == KillAt::MidWrite && writes_ == 2) || (at_ == KillAt::LastWrite && writes_ == n_writes_)) {
        posix_file_io().write(fd, buf, n / 2);  // half of it reaches the file
        ::raise(SIGKILL);
      }
    }
    return posix_file_io().write(fd, buf, n);
  }
  long pread(int fd, void* buf, size_t n, uint64_t off) override { return posix_file_io().pread(fd, buf, n, off); }
  int fsync(int fd) override {
    if (armed) {
      ++fsyncs_;
      if (at_ == KillAt::BeforeFsync && fsyncs_ == 1) ::raise(SIGKILL);
      if (at_ == KillAt::AfterRename && fsyncs_ == 2) ::raise(SIGKILL);  // the directory's
    }
    return posix_file_io().fsync(fd);
  }
  int close(int fd) override { return posix_file_io().close(fd); }
  int rename(const char* a, const char* b) override {
    if (armed && at_ == KillAt::BeforeRename) ::raise(SIGKILL);
    return posix_file_io().rename(a, b);
  }
  int unlink(const char* path) override { return posix_file_io().unlink(path); }
  int fstat_size(int fd, uint64_t* size) override { return posix_file_io().fstat_size(fd, size); }

 private:
  KillAt at_;
  int n_writes_;
  int writes_ = 0, fsyncs_ = 0;
};

TEST_F(StateFile, WriterKilledMidSaveNeverLeavesATornFile) {
  // A 9 MB state: 2 layers x (K, V) of 2 KiB rows, 1100 tokens. The file sink's 4 MiB buffer
  // turns one save into several writes.
  KvLayout l;
  ASSERT_EQ(KvLayout::make(1200, {{{KvStream::K, DType::F32, 512, 8}, {KvStream::V, DType::F32, 512, 8}},
                                  {{KvStream::K, DType::F32, 512, 8}, {KvStream::V, DType::F32, 512, 8}}},
                           &l),
            "");
  KvCache cache(std::move(l));
  fill_cells(cache, 3, 0, 1100, 9);
  const ModelFingerprint fp = stories().fingerprint();
  auto opts = [](uint64_t i) {
    StateSaveOptions o;
    o.created_ms = 1000 + i;  // save i differs from save i - 1 (META and its checksum)
    return o;
  };
  auto bytes_of = [&](uint64_t i) {
    std::vector<uint8_t> out;
    BufferSink sink(&out);
    EXPECT_TRUE(state_write_seq(cache, 3, fp, opts(i), sink).is_ok());
    return out;
  };
  int n_writes = 0;
  {
    FaultIo io(std::vector<FaultRule>{});  // no faults: it only counts the calls
    StateSaveOptions o = opts(0);
    o.io = &io;
    ASSERT_TRUE(state_save_seq_file(cache, 3, fp, (dir_ / "count.kvs").string(), o).is_ok());
    n_writes = static_cast<int>(io.calls(IoOp::Write));
    fs::remove(dir_ / "count.kvs");
  }
  ASSERT_GE(n_writes, 3) << "the save should take several writes";

  const std::string path = (dir_ / "slot.kvs").string();
  for (KillAt at : {KillAt::FirstWrite, KillAt::MidWrite, KillAt::LastWrite, KillAt::BeforeFsync, KillAt::BeforeRename, KillAt::AfterRename}) {
    for (int kill_iter : {0, 2}) {
      SCOPED_TRACE(std::string(kill_name(at)) + ", save #" + std::to_string(kill_iter));
      fs::remove(path);
      const pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        KillIo io(at, n_writes);
        for (int i = 0; i <= kill_iter; ++i) {
          io.armed = i == kill_iter;
          StateSaveOptions o = opts(static_cast<uint64_t>(i));
          o.io = &io;
          if (!state_save_seq_file(cache, 3, fp, path, o).is_ok()) ::_exit(3);
        }
        ::_exit(2);  // never killed
      }
      int st = 0;
      ASSERT_EQ(::waitpid(pid, &st, 0), pid);
      ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "child status " << st;
      // The file is absent, or the last complete save: never a mix.
      const int last_complete = at == KillAt::AfterRename ? kill_iter : kill_iter - 1;
      if (last_complete < 0) {
        EXPECT_FALSE(fs::exists(path));
      } else {
        ASSERT_TRUE(fs::exists(path));
        auto src = FdSource::open(posix_file_io(), path);
        ASSERT_TRUE(src.is_ok());
        auto info = state_inspect(*src);
        ASSERT_TRUE(info.is_ok()) << info.status().to_string();
        EXPECT_EQ(info->created_ms, 1000u + static_cast<uint64_t>(last_complete));
        EXPECT_TRUE(slurp_bytes(path) == bytes_of(static_cast<uint64_t>(last_complete)));
      }
      // The dead writer's temporary file (if it got that far) is cleaned up.
      const size_t n_tmp = listing(dir_).size() - (fs::exists(path) ? 1 : 0);
      EXPECT_EQ(n_tmp, at == KillAt::AfterRename ? 0u : 1u);
      EXPECT_EQ(state_cleanup_temp_files(dir_.string()), static_cast<int>(n_tmp));
      EXPECT_EQ(listing(dir_).size(), fs::exists(path) ? 1u : 0u);
    }
  }
}

// ======================================================================= exact size (§7)

TEST(StateSize, FileSizeFollowsFromTheHyperparameters) {
  const Hparams& hp = stories().hparams();
  const ModelFingerprint& fp = stories().fingerprint();
  const std::string writer = std::string("kvstash ") + KVSTASH_VERSION + " (" + KVSTASH_COMMIT + ")";
  std::vector<float> logits(hp.n_vocab, 0.25f);
  const fs::path dir = fs::temp_directory_path() / ("kvstash_state_size_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (DType t : {DType::F16, DType::F32, DType::BF16}) {
    const uint64_t elem_bytes = t == DType::F32 ? 4 : 2;
    const uint64_t row_bytes = uint64_t(hp.n_head_kv) * hp.head_dim * elem_bytes;  // one K or V row
    for (uint32_t n : {1u, 31u, 100u}) {
      auto c = stories_cache(128, t);
      fill_cells(*c, 4, 0, n, 3);
      for (uint16_t minor : {1, 0})
      for (bool with_logits : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " n=" + std::to_string(n) + (with_logits ? " with logits" : "") + " format 1." + std::to_string(minor));
        const uint64_t meta = 8 + 4 + 4 + 4 + 4 + 2 + writer.size();
        const uint64_t model = 4 * 8 + 4 + 2 + fp.arch.size() + 2 + fp.name.size();
        const uint64_t layout = 4 + uint64_t(hp.n_layer) * (4 + 2 * 32);
        // 1.1: CEL2, one run (positions 0..n-1) and 4 bytes per cell; 1.0: CELL, 16 bytes per cell.
        const uint64_t cells = minor == 1 ? 8 + 16 * 1 + 4 * uint64_t(n) : 4 + 16 * uint64_t(n);
        const uint64_t kv = uint64_t(hp.n_layer) * 2 * (24 + 8 + row_bytes * n);
        const uint64_t logt = with_logits ? 24 + 4 * uint64_t(hp.n_vocab) : 0;
        const uint64_t want = 64 + (24 + meta) + (24 + model) + (24 + layout) + (24 + cells) + kv + logt + 24;
        StateSaveOptions o;
        o.durable = false;
        o.format_minor = minor;
        if (with_logits) {
          o.logits = logits.data();
          o.n_logits = hp.n_vocab;
        }
        std::vector<uint8_t> b;
        BufferSink sink(&b);
        auto w = state_write_seq(*c, 4, fp, o, sink);
        ASSERT_TRUE(w.is_ok());
        EXPECT_EQ(b.size(), want);
        EXPECT_EQ(w->n_bytes, want);
        EXPECT_EQ(state_size_seq(*c, 4, fp, o), want);
        const fs::path p = dir / "s.kvs";
        auto f = state_save_seq_file(*c, 4, fp, p.string(), o);
        ASSERT_TRUE(f.is_ok());
        EXPECT_EQ(f->n_bytes, want);
        EXPECT_EQ(fs::file_size(p), want);
        MemSource src(b.data(), b.size());
        auto info = state_inspect(src);
        ASSERT_TRUE(info.is_ok()) << info.status().to_string();
        EXPECT_EQ(info->writer, writer);
        EXPECT_EQ(info->minor, minor);
        EXPECT_EQ(info->kv_bytes, uint64_t(hp.n_layer) * 2 * row_bytes * n);
        EXPECT_EQ(info->n_logits, with_logits ? hp.n_vocab : 0u);
      }
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvstash
