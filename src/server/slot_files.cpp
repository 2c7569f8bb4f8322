#include "server/slot_files.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/slot_state.h"

namespace kvstash {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTmpMarker = ".kvstash-tmp.";

// Strict UTF-8 decoding (no overlong forms, no surrogates, <= U+10FFFF); false when invalid.
bool decode_utf8(std::string_view s, std::vector<char32_t>* out) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len;
    char32_t cp;
    if (c < 0x80) len = 1, cp = c;
    else if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF) return false;
    out->push_back(cp);
    i += len;
  }
  return true;
}

Status fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return io_error("cannot open '" + dir + "': " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0) return io_error("fsync of '" + dir + "' failed: " + std::strerror(e));
  return Status::ok();
}

}  // namespace

bool validate_slot_filename(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  std::vector<char32_t> cps;
  if (!decode_utf8(name, &cps)) return false;
  for (char32_t c : cps) {
    if (c <= 0x1F || c == 0x7F || (c >= 0x80 && c <= 0x9F) || c == 0xFF0E || c == 0x2215 || c == 0x2216 ||
        (c >= 0xD800 && c <= 0xDFFF) || c == 0xFFFD || c == 0xFEFF || c == '/' || c == '\\' || c == ':' || c == '*' ||
        c == '?' || c == '"' || c == '<' || c == '>' || c == '|')
      return false;
  }
  if (name.front() == ' ' || name.back() == ' ' || name.back() == '.') return false;
  if (name.find("..") != std::string_view::npos || name == ".") return false;
  if (name.find(kTmpMarker) != std::string_view::npos) return false;
  return true;
}

Result<SlotDir> SlotDir::open(const std::string& dir, int* n_stale) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error("--slot-save-path: cannot create '" + dir + "': " + ec.message());
  const fs::path c = fs::canonical(dir, ec);
  if (ec) return io_error("--slot-save-path: cannot resolve '" + dir + "': " + ec.message());
  if (!fs::is_directory(c, ec)) return invalid_argument("--slot-save-path: '" + dir + "' is not a directory");
  SlotDir d(c.string());
  const int n = state_cleanup_temp_files(d.dir_);
  if (n_stale) *n_stale = n;
  return d;
}

bool SlotDir::inside(const std::string& canonical) const {
  return canonical.size() > dir_.size() + 1 && canonical.compare(0, dir_.size(), dir_) == 0 && canonical[dir_.size()] == '/';
}

Result<std::string> SlotDir::resolve(std::string_view name) const {
  if (!validate_slot_filename(name)) return invalid_argument("Invalid filename");
  const fs::path p = fs::path(dir_) / std::string(name);
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(p, ec);
  if (ec || !fs::exists(st)) return p.string();  // a new file, directly in the directory
  const fs::path c = fs::canonical(p, ec);
  if (ec) return invalid_argument("Invalid filename: '" + std::string(name) + "' cannot be resolved (" + ec.message() + ")");
  if (!inside(c.string())) return invalid_argument("Invalid filename: '" + std::string(name) + "' resolves outside the slot save directory");
  if (fs::is_directory(c, ec)) return invalid_argument("Invalid filename: '" + std::string(name) + "' is a directory");
  return c.string();
}

std::vector<SavedStateEntry> SlotDir::list() const {
  std::vector<SavedStateEntry> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (name.find(kTmpMarker) != std::string::npos) continue;  // a save in progress
    std::error_code ec2;
    if (e.is_directory(ec2)) continue;
    SavedStateEntry s;
    s.filename = name;
    auto path = resolve(name);
    if (!path.is_ok()) {
      s.error = path.status().message();
      out.push_back(std::move(s));
      continue;
    }
    struct stat sb {};
    if (::stat(path->c_str(), &sb) == 0) {
      s.size_bytes = uint64_t(sb.st_size);
      s.mtime_s = int64_t(sb.st_mtime);
    }
    auto info = slot_state_inspect(*path);
    if (info.is_ok()) {
      s.valid = true;
      s.info = std::move(info).value();
    } else {
      s.error = info.status().message();
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const SavedStateEntry& a, const SavedStateEntry& b) { return a.filename < b.filename; });
  return out;
}

Status SlotDir::remove(std::string_view name) const {
  KV_ASSIGN_OR_RETURN(std::string resolved, resolve(name));
  (void)resolved;  // confinement checked; the entry itself (a link, not its target) is removed
  const std::string p = dir_ + "/" + std::string(name);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(p, ec))) return not_found("no saved state named '" + std::string(name) + "'");
  if (::unlink(p.c_str()) != 0) return io_error("cannot delete '" + std::string(name) + "': " + std::strerror(errno));
  return fsync_dir(dir_);
}

Status SlotDir::rename(std::string_view from, std::string_view to, bool* exists) const {
  *exists = false;
  KV_ASSIGN_OR_RETURN(std::string src_resolved, resolve(from));
  (void)src_resolved;
  if (!validate_slot_filename(to)) return invalid_argument("Invalid filename");
  const std::string src = dir_ + "/" + std::string(from), dst = dir_ + "/" + std::string(to);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(src, ec))) return not_found("no saved state named '" + std::string(from) + "'");
  if (::renameat2(AT_FDCWD, src.c_str(), AT_FDCWD, dst.c_str(), RENAME_NOREPLACE) != 0) {
    int e = errno;
    if (e == EINVAL || e == ENOSYS) {
      // The filesystem lacks RENAME_NOREPLACE: link() refuses an existing name atomically too.
      if (::link(src.c_str(), dst.c_str()) == 0) {
        ::unlink(src.c_str());
        e = 0;
      } else {
        e = errno;
      }
    }
    if (e == EEXIST) {
      *exists = true;
      return invalid_argument("a saved state named '" + std::string(to) + "' already exists");
    }
    if (e != 0) return io_error("cannot rename '" + std::string(from) + "': " + std::strerror(e));
  }
  return fsync_dir(dir_);
}

}  // namespace kvstash
