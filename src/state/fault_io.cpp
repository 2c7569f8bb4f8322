#include "state/fault_io.h"

#include <fcntl.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace kvstash {
namespace {

constexpr const char* kOpNames[kNumIoOps] = {"open", "diropen", "write", "pread", "fsync", "dirsync", "close", "rename", "unlink", "fstat"};

struct ErrName {
  const char* name;
  int err;
};
constexpr ErrName kErrNames[] = {{"ENOSPC", ENOSPC}, {"EIO", EIO},       {"EDQUOT", EDQUOT}, {"EXDEV", EXDEV},   {"EACCES", EACCES},
                                 {"EROFS", EROFS},   {"EINTR", EINTR},   {"EAGAIN", EAGAIN}, {"EMFILE", EMFILE}, {"ENOENT", ENOENT}};

std::string err_name(int err) {
  if (err == 0) return "short";
  for (const ErrName& e : kErrNames)
    if (e.err == err) return e.name;
  return std::to_string(err);
}

}  // namespace

const char* io_op_name(IoOp op) { return kOpNames[static_cast<int>(op)]; }

Result<std::vector<FaultRule>> parse_fault_rules(const std::string& spec) {
  std::vector<FaultRule> out;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t end = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, end - start);
    start = end + 1;
    if (item.empty()) {
      if (end == spec.size()) break;
      continue;
    }
    const size_t c1 = item.find(':'), c2 = c1 == std::string::npos ? c1 : item.find(':', c1 + 1);
    if (c2 == std::string::npos) return invalid_argument("fault rule '" + item + "': expected OP:N[+]:ERR");
    const std::string op = item.substr(0, c1), n = item.substr(c1 + 1, c2 - c1 - 1), err = item.substr(c2 + 1);
    FaultRule r;
    bool found = false;
    for (int i = 0; i < kNumIoOps; ++i)
      if (op == kOpNames[i]) r.op = static_cast<IoOp>(i), found = true;
    if (!found) return invalid_argument("fault rule '" + item + "': unknown operation '" + op + "'");
    std::string digits = n;
    if (!digits.empty() && digits.back() == '+') r.and_after = true, digits.pop_back();
    char* stop = nullptr;
    errno = 0;
    const unsigned long long v = digits.empty() ? 0 : std::strtoull(digits.c_str(), &stop, 10);
    if (digits.empty() || *stop != '\0' || errno != 0 || v == 0 || digits[0] == '-')
      return invalid_argument("fault rule '" + item + "': call number must be a positive integer");
    r.nth = v;
    if (err == "short") {
      if (r.op != IoOp::Write && r.op != IoOp::Pread) return invalid_argument("fault rule '" + item + "': only write and pread can be short");
      r.err = 0;
    } else {
      found = false;
      for (const ErrName& e : kErrNames)
        if (err == e.name) r.err = e.err, found = true;
      if (!found) return invalid_argument("fault rule '" + item + "': unknown error '" + err + "'");
    }
    out.push_back(r);
  }
  if (out.empty()) return invalid_argument("fault rules: empty specification");
  return out;
}

std::string fault_rules_to_string(const std::vector<FaultRule>& rules) {
  std::string s;
  for (const FaultRule& r : rules)
    s += (s.empty() ? "" : ",") + std::string(io_op_name(r.op)) + ":" + std::to_string(r.nth) + (r.and_after ? "+" : "") + ":" + err_name(r.err);
  return s;
}

FaultIo::FaultIo(std::vector<FaultRule> rules, FileIo& base) : rules_(std::move(rules)), base_(base) {}

const FaultRule* FaultIo::fire(IoOp op) {
  const uint64_t n = calls_[static_cast<int>(op)].fetch_add(1) + 1;
  for (const FaultRule& r : rules_)
    if (r.op == op && r.matches(n)) {
      injected_.fetch_add(1);
      return &r;
    }
  return nullptr;
}

bool FaultIo::is_dir(int fd) {
  std::lock_guard<std::mutex> lk(mu_);
  return dir_fds_.count(fd) > 0;
}

int FaultIo::open(const char* path, int flags, int mode) {
  const bool dir = (flags & O_DIRECTORY) != 0;
  if (const FaultRule* r = fire(dir ? IoOp::DirOpen : IoOp::Open)) return errno = r->err, -1;
  const int fd = base_.open(path, flags, mode);
  if (fd >= 0 && dir) {
    std::lock_guard<std::mutex> lk(mu_);
    dir_fds_.insert(fd);
  }
  return fd;
}

long FaultIo::write(int fd, const void* buf, size_t n) {
  if (max_write_ > 0) n = std::min(n, max_write_);
  if (const FaultRule* r = fire(IoOp::Write)) {
    if (r->err != 0 || n < 2) return errno = r->err != 0 ? r->err : ENOSPC, -1;
    return base_.write(fd, buf, n / 2);  // a short write: half of it reaches the file
  }
  return base_.write(fd, buf, n);
}

long FaultIo::pread(int fd, void* buf, size_t n, uint64_t off) {
  if (const FaultRule* r = fire(IoOp::Pread)) {
    if (r->err != 0 || n < 2) return errno = r->err != 0 ? r->err : EIO, -1;
    return base_.pread(fd, buf, n / 2, off);
  }
  return base_.pread(fd, buf, n, off);
}

int FaultIo::fsync(int fd) {
  if (const FaultRule* r = fire(is_dir(fd) ? IoOp::DirSync : IoOp::Fsync)) return errno = r->err, -1;
  return base_.fsync(fd);
}

int FaultIo::close(int fd) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    dir_fds_.erase(fd);
  }
  // A failed close still releases the descriptor (Linux semantics), so no fd leaks.
  const int rc = base_.close(fd);
  if (const FaultRule* r = fire(IoOp::Close)) return errno = r->err, -1;
  return rc;
}

int FaultIo::rename(const char* from, const char* to) {
  if (const FaultRule* r = fire(IoOp::Rename)) return errno = r->err, -1;
  return base_.rename(from, to);
}

int FaultIo::unlink(const char* path) {
  if (const FaultRule* r = fire(IoOp::Unlink)) return errno = r->err, -1;
  return base_.unlink(path);
}

int FaultIo::fstat_size(int fd, uint64_t* size) {
  if (const FaultRule* r = fire(IoOp::Fstat)) return errno = r->err, -1;
  return base_.fstat_size(fd, size);
}

Result<std::string> install_faults_from_env() {
  const char* spec = std::getenv("KVSTASH_FAULTS");
  if (!spec || !*spec) return std::string();
  KV_ASSIGN_OR_RETURN(std::vector<FaultRule> rules, parse_fault_rules(spec));
  static std::unique_ptr<FaultIo> io;  // lives for the process
  io = std::make_unique<FaultIo>(rules);
  install_default_file_io(io.get());
  return fault_rules_to_string(rules);
}

}  // namespace kvstash
