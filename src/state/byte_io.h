// Byte sinks and sources for the state writer and reader, and the file-I/O layer under them.
// Owns: buffering and the FileIo seam through which every file operation of src/state goes, so
// tests can inject ENOSPC, EIO, short writes and failed fsync/rename/read.
// Sinks and sources are not thread-safe; FileIo implementations must be.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace kvstash {

// ---- file I/O seam ----
class FileIo {
 public:
  virtual ~FileIo() = default;
  // Each returns -1 and sets errno on failure, like the POSIX call it wraps.
  virtual int open(const char* path, int flags, int mode) = 0;
  virtual long write(int fd, const void* buf, size_t n) = 0;
  virtual long pread(int fd, void* buf, size_t n, uint64_t off) = 0;
  virtual int fsync(int fd) = 0;
  virtual int close(int fd) = 0;
  virtual int rename(const char* from, const char* to) = 0;
  virtual int unlink(const char* path) = 0;
  virtual int fstat_size(int fd, uint64_t* size) = 0;
};

// The real thing: thin wrappers over POSIX.
FileIo& posix_file_io();
// The FileIo used where a caller names none: posix_file_io(), unless one was installed.
// Installing is for start-up (before any I/O; see install_faults_from_env) and tests; the
// installed FileIo must outlive its use.
FileIo& default_file_io();
void install_default_file_io(FileIo* io);  // nullptr: back to posix_file_io()

// ---- sinks ----
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual Status write(const void* p, size_t n) = 0;
  virtual uint64_t n_written() const = 0;
};

// Counts bytes, stores nothing: the one way sizes are computed.
class CountingSink final : public ByteSink {
 public:
  Status write(const void*, size_t n) override {
    n_ += n;
    return Status::ok();
  }
  uint64_t n_written() const override { return n_; }

 private:
  uint64_t n_ = 0;
};

// Appends to a caller-owned vector.
class BufferSink final : public ByteSink {
 public:
  explicit BufferSink(std::vector<uint8_t>* out) : out_(out) {}
  Status write(const void* p, size_t n) override;
  uint64_t n_written() const override { return n_; }

 private:
  std::vector<uint8_t>* out_;
  uint64_t n_ = 0;
};

// Buffered writes to an open file descriptor through FileIo; handles short writes and EINTR.
// A write of at least kDirectBytes (KV rows) goes to the file as it is, after the buffered
// bytes: copying it would cost more than the system call it saves. The buffer gathers the rest.
class FdSink final : public ByteSink {
 public:
  static constexpr size_t kDirectBytes = size_t(256) << 10;
  FdSink(FileIo& io, int fd, std::string name, size_t buffer_bytes = size_t(1) << 20);
  Status write(const void* p, size_t n) override;
  Status flush();
  uint64_t n_written() const override { return n_; }

 private:
  Status write_all(const uint8_t* p, size_t n);
  FileIo& io_;
  int fd_;
  std::string name_;
  std::unique_ptr<uint8_t[]> buf_;  // not zeroed: only the bytes before used_ are ever read
  size_t buf_bytes_;
  size_t used_ = 0;
  uint64_t n_ = 0;
};

// ---- sources: random access, so the reader can verify a file before applying it ----
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Reads exactly n bytes at offset off; Corruption if past the end, IO on read errors.
  virtual Status read_at(uint64_t off, void* p, size_t n) = 0;
  // True when read_at may run on several threads at once (the reader then reads sections in
  // parallel if given a pool). Sources with state between calls keep the default.
  virtual bool concurrent_reads() const { return false; }
};

class MemSource final : public ByteSource {
 public:
  MemSource(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  uint64_t size() const override { return n_; }
  Status read_at(uint64_t off, void* p, size_t n) override;
  bool concurrent_reads() const override { return true; }

 private:
  const uint8_t* p_;
  size_t n_;
};

class FdSource final : public ByteSource {
 public:
  // Takes the size once at construction (fstat); reads go through FileIo.
  static Result<FdSource> open(FileIo& io, const std::string& path);
  FdSource(FdSource&& o) noexcept;
  FdSource& operator=(FdSource&&) = delete;
  ~FdSource() override;
  uint64_t size() const override { return size_; }
  Status read_at(uint64_t off, void* p, size_t n) override;
  bool concurrent_reads() const override { return true; }  // pread through a thread-safe FileIo

 private:
  FdSource(FileIo& io, int fd, uint64_t size, std::string name) : io_(io), fd_(fd), size_(size), name_(std::move(name)) {}
  FileIo& io_;
  int fd_;
  uint64_t size_;
  std::string name_;
};

}  // namespace kvstash
