// Fault injection for the file-I/O seam: a FileIo that fails chosen calls (the Nth write, fsync,
// rename, read, ...) with an errno or a short transfer, passing everything else to another FileIo.
// Owns: the rule language (`KVSTASH_FAULTS`, docs/reliability.md) and the process-wide FileIo
// installed as default_file_io(), so a whole server can run with injected faults.
// Thread-safe: counters are atomic; rules are fixed at construction.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"
#include "state/byte_io.h"

namespace kvstash {

// One kind of call through FileIo. `Fsync` is an fsync of a file, `DirSync` of a directory
// (an fd opened with O_DIRECTORY); `Open` opens a file, `DirOpen` a directory.
enum class IoOp : uint8_t { Open, DirOpen, Write, Pread, Fsync, DirSync, Close, Rename, Unlink, Fstat };
inline constexpr int kNumIoOps = 10;
const char* io_op_name(IoOp op);

struct FaultRule {
  IoOp op = IoOp::Write;
  uint64_t nth = 1;        // 1-based count of calls of `op`
  bool and_after = false;  // also every later call ("a full disk")
  int err = 0;             // errno to fail with; 0: a short transfer instead
  bool matches(uint64_t n) const { return n == nth || (and_after && n > nth); }
};

// Parses "OP:N[+]:ERR[,...]", e.g. "write:3:ENOSPC,fsync:1+:EIO,pread:2:short". OP is one of
// open, diropen, write, pread, fsync, dirsync, close, rename, unlink, fstat; ERR an errno name
// (ENOSPC, EIO, EDQUOT, EXDEV, EACCES, EROFS, EINTR, EAGAIN, EMFILE, ENOENT) or `short`.
Result<std::vector<FaultRule>> parse_fault_rules(const std::string& spec);
std::string fault_rules_to_string(const std::vector<FaultRule>& rules);

class FaultIo final : public FileIo {
 public:
  explicit FaultIo(std::vector<FaultRule> rules, FileIo& base = posix_file_io());

  int open(const char* path, int flags, int mode) override;
  long write(int fd, const void* buf, size_t n) override;
  long pread(int fd, void* buf, size_t n, uint64_t off) override;
  int fsync(int fd) override;
  int close(int fd) override;
  int rename(const char* from, const char* to) override;
  int unlink(const char* path) override;
  int fstat_size(int fd, uint64_t* size) override;

  // Calls of `op` seen so far, and faults injected so far.
  uint64_t calls(IoOp op) const { return calls_[static_cast<int>(op)].load(); }
  uint64_t n_injected() const { return injected_.load(); }
  // Caps every write at `bytes` (0: no cap), so small files still take many write calls.
  void set_max_write(size_t bytes) { max_write_ = bytes; }

 private:
  // Counts the call; returns the rule that fires on it, if any.
  const FaultRule* fire(IoOp op);
  bool is_dir(int fd);

  std::vector<FaultRule> rules_;
  FileIo& base_;
  std::atomic<uint64_t> calls_[kNumIoOps] = {};
  std::atomic<uint64_t> injected_{0};
  size_t max_write_ = 0;
  std::mutex mu_;
  std::set<int> dir_fds_;
};

// Reads KVSTASH_FAULTS; when set, installs a FaultIo with its rules for the rest of the process
// and returns a description (empty when unset). An invalid spec is an InvalidArgument error.
Result<std::string> install_faults_from_env();

}  // namespace kvstash
