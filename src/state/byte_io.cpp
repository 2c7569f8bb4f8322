#include "state/byte_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace kvstash {
namespace {

class PosixFileIo final : public FileIo {
 public:
  int open(const char* path, int flags, int mode) override { return ::open(path, flags | O_CLOEXEC, mode); }
  long write(int fd, const void* buf, size_t n) override { return ::write(fd, buf, n); }
  long pread(int fd, void* buf, size_t n, uint64_t off) override { return ::pread(fd, buf, n, static_cast<off_t>(off)); }
  int fsync(int fd) override { return ::fsync(fd); }
  int close(int fd) override { return ::close(fd); }
  int rename(const char* from, const char* to) override { return std::rename(from, to); }
  int unlink(const char* path) override { return ::unlink(path); }
  int fstat_size(int fd, uint64_t* size) override {
    struct stat st;
    if (::fstat(fd, &st) != 0) return -1;
    *size = static_cast<uint64_t>(st.st_size);
    return 0;
  }
};

std::atomic<FileIo*> g_default_io{nullptr};

}  // namespace

FileIo& posix_file_io() {
  static PosixFileIo io;
  return io;
}

FileIo& default_file_io() {
  FileIo* io = g_default_io.load();
  return io ? *io : posix_file_io();
}

void install_default_file_io(FileIo* io) { g_default_io.store(io); }

Status BufferSink::write(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out_->insert(out_->end(), b, b + n);
  n_ += n;
  return Status::ok();
}

FdSink::FdSink(FileIo& io, int fd, std::string name, size_t buffer_bytes)
    : io_(io), fd_(fd), name_(std::move(name)), buf_(new uint8_t[buffer_bytes]), buf_bytes_(buffer_bytes) {}

Status FdSink::write_all(const uint8_t* p, size_t n) {
  while (n > 0) {
    const long w = io_.write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      return Status(e == ENOSPC || e == EDQUOT ? StatusCode::ResourceExhausted : StatusCode::IO,
                    "state: write to '" + name_ + "' failed: " + std::strerror(e));
    }
    if (w == 0) return io_error("state: write to '" + name_ + "' made no progress");
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::ok();
}

Status FdSink::write(const void* pv, size_t n) {
  const auto* p = static_cast<const uint8_t*>(pv);
  n_ += n;
  if (n < kDirectBytes && used_ + n <= buf_bytes_) {
    std::memcpy(buf_.get() + used_, p, n);
    used_ += n;
    return Status::ok();
  }
  KV_RETURN_IF_ERROR(flush());
  if (n >= kDirectBytes || n >= buf_bytes_) return write_all(p, n);  // large writes bypass the buffer
  std::memcpy(buf_.get(), p, n);
  used_ = n;
  return Status::ok();
}

Status FdSink::flush() {
  if (used_ == 0) return Status::ok();
  Status s = write_all(buf_.get(), used_);
  used_ = 0;
  return s;
}

Status MemSource::read_at(uint64_t off, void* p, size_t n) {
  if (off > n_ || n > n_ - off)
    return corruption("state: truncated: need bytes [" + std::to_string(off) + ", " + std::to_string(off + n) + "), have " + std::to_string(n_));
  if (n > 0) std::memcpy(p, p_ + off, n);  // memcpy may not be given a null pointer, even for 0 bytes
  return Status::ok();
}

Result<FdSource> FdSource::open(FileIo& io, const std::string& path) {
  const int fd = io.open(path.c_str(), O_RDONLY, 0);
  if (fd < 0) {
    const int e = errno;
    return Status(e == ENOENT ? StatusCode::NotFound : StatusCode::IO, "state: cannot open '" + path + "': " + std::strerror(e));
  }
  uint64_t size = 0;
  if (io.fstat_size(fd, &size) != 0) {
    const int e = errno;
    io.close(fd);
    return io_error("state: cannot stat '" + path + "': " + std::strerror(e));
  }
  return FdSource(io, fd, size, path);
}

FdSource::FdSource(FdSource&& o) noexcept : io_(o.io_), fd_(o.fd_), size_(o.size_), name_(std::move(o.name_)) { o.fd_ = -1; }

FdSource::~FdSource() {
  if (fd_ >= 0) io_.close(fd_);
}

Status FdSource::read_at(uint64_t off, void* pv, size_t n) {
  if (off > size_ || n > size_ - off)
    return corruption("state: '" + name_ + "' is truncated: need bytes [" + std::to_string(off) + ", " + std::to_string(off + n) +
                      "), file has " + std::to_string(size_));
  auto* p = static_cast<uint8_t*>(pv);
  while (n > 0) {
    const long r = io_.pread(fd_, p, n, off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return io_error("state: read of '" + name_ + "' failed: " + std::strerror(errno));
    }
    if (r == 0) return corruption("state: '" + name_ + "' shrank while being read (at byte " + std::to_string(off) + ")");
    p += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
  return Status::ok();
}

}  // namespace kvstash
