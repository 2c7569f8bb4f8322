// Atomic, durable state files (docs/state-format.md §6).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "state/state.h"

namespace kvstash {
namespace {

constexpr const char* kTmpMarker = ".kvstash-tmp.";

std::string dir_of(const std::string& path) {
  const auto p = std::filesystem::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

std::string temp_name(const std::string& path) {
  const std::filesystem::path p(path);
  static std::atomic<uint64_t> counter{0};
  // .NAME.kvstash-tmp.PID[.N]: the PID lets a later start tell whether its writer is alive.
  return (p.parent_path() / ("." + p.filename().string() + kTmpMarker + std::to_string(::getpid()) + "." +
                             std::to_string(counter.fetch_add(1))))
      .string();
}

// A full disk or quota is ResourceExhausted (HTTP 507); every other failure is IO.
Status file_error(int e, const std::string& what) {
  return Status(e == ENOSPC || e == EDQUOT ? StatusCode::ResourceExhausted : StatusCode::IO, what + ": " + std::strerror(e));
}

}  // namespace

Status atomic_write_file(const std::string& path, bool durable, FileIo& io, const std::function<Status(ByteSink&)>& produce,
                         uint64_t* n_written) {
  const std::string tmp = temp_name(path);
  const int fd = io.open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) return file_error(errno, "state: cannot create '" + tmp + "'");
  auto fail = [&](Status s) {
    io.close(fd);
    io.unlink(tmp.c_str());
    return s;
  };
  FdSink sink(io, fd, tmp);
  if (Status s = produce(sink); !s.is_ok()) return fail(s);
  if (Status s = sink.flush(); !s.is_ok()) return fail(s);
  if (durable && io.fsync(fd) != 0) {
    return fail(file_error(errno, "state: fsync of '" + tmp + "' failed"));
  }
  if (io.close(fd) != 0) {
    const Status s = file_error(errno, "state: close of '" + tmp + "' failed");
    io.unlink(tmp.c_str());
    return s;
  }
  if (io.rename(tmp.c_str(), path.c_str()) != 0) {
    const Status s = file_error(errno, "state: cannot rename '" + tmp + "' to '" + path + "'");
    io.unlink(tmp.c_str());
    return s;
  }
  if (durable) {
    const int dfd = io.open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY, 0);
    // After the rename: `path` is complete and valid, but its durability is not guaranteed.
    if (dfd < 0)
      return io_error("state: '" + path + "' was written, but its directory could not be opened to sync it (durability not guaranteed): " +
                      std::strerror(errno));
    const int rc = io.fsync(dfd);
    const int e = errno;
    io.close(dfd);
    if (rc != 0)
      return io_error("state: '" + path + "' was written, but the fsync of its directory failed (durability not guaranteed): " + std::strerror(e));
  }
  if (n_written) *n_written = sink.n_written();
  return Status::ok();
}

Result<StateSaveResult> state_save_seq_file(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const std::string& path,
                                            const StateSaveOptions& opt) {
  StateSaveResult res;
  KV_RETURN_IF_ERROR(atomic_write_file(path, opt.durable, opt.io ? *opt.io : default_file_io(), [&](ByteSink& sink) -> Status {
    KV_ASSIGN_OR_RETURN(res, state_write_seq(cache, seq, fp, opt, sink));
    return Status::ok();
  }, nullptr));
  return res;
}

Result<StateSaveResult> state_save_all_file(const KvCache& cache, const ModelFingerprint& fp, const std::string& path, const StateSaveOptions& opt) {
  StateSaveResult res;
  KV_RETURN_IF_ERROR(atomic_write_file(path, opt.durable, opt.io ? *opt.io : default_file_io(), [&](ByteSink& sink) -> Status {
    KV_ASSIGN_OR_RETURN(res, state_write_all(cache, fp, opt, sink));
    return Status::ok();
  }, nullptr));
  return res;
}

Result<StateLoadResult> state_load_seq_file(KvCache& cache, SeqId dest, const ModelFingerprint& live, const std::string& path,
                                            const StateLoadOptions& opt) {
  KV_ASSIGN_OR_RETURN(FdSource src, FdSource::open(opt.io ? *opt.io : default_file_io(), path));
  return state_read_seq(cache, dest, live, src, opt);
}

Result<StateLoadResult> state_load_all_file(KvCache& cache, const ModelFingerprint& live, const std::string& path, const StateLoadOptions& opt) {
  KV_ASSIGN_OR_RETURN(FdSource src, FdSource::open(opt.io ? *opt.io : default_file_io(), path));
  return state_read_all(cache, live, src, opt);
}

int state_cleanup_temp_files(const std::string& dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t at = name.find(kTmpMarker);
    if (name.empty() || name[0] != '.' || at == std::string::npos) continue;
    const std::string rest = name.substr(at + std::strlen(kTmpMarker));
    const long pid = std::strtol(rest.c_str(), nullptr, 10);
    if (pid <= 0) continue;
    if (pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::error_code rm;
      if (std::filesystem::remove(e.path(), rm)) ++removed;
    }
  }
  return removed;
}

}  // namespace kvstash
