// Slot files: the --slot-save-path directory and the names clients may use in it.
// Owns: llama.cpp's filename rules (fs_validate_filename, allow_subdirs = false), the
// confinement of every resolved path to the directory (a symlink cannot lead out), the listing,
// deletion and no-overwrite renaming of saved states, and the start-up removal of stale temp files.
// Thread-safe: const methods only touch the filesystem.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "state/state.h"

namespace kvstash {

// llama.cpp's fs_validate_filename(name, allow_subdirs = false), plus: names of kvstash's own
// temporary files (".NAME.kvstash-tmp.PID") are refused.
bool validate_slot_filename(std::string_view name);

struct SavedStateEntry {
  std::string filename;
  uint64_t size_bytes = 0;
  int64_t mtime_s = 0;       // unix seconds
  bool valid = false;        // state_inspect accepted it
  std::string error;         // why not
  StateInfo info;            // when valid
};

class SlotDir {
 public:
  SlotDir() = default;
  // Creates `dir` if missing and canonicalises it; removes stale temp files of dead writers
  // (*n_stale gets how many).
  static Result<SlotDir> open(const std::string& dir, int* n_stale);

  const std::string& path() const { return dir_; }

  // The path of `name` in the directory: InvalidArgument "Invalid filename ..." when the name
  // breaks the rules or an existing entry resolves (through symlinks) outside the directory.
  Result<std::string> resolve(std::string_view name) const;

  // Saved states, sorted by name; files that are not valid state files are listed with the reason.
  std::vector<SavedStateEntry> list() const;
  // NotFound when there is no such file.
  Status remove(std::string_view name) const;
  // Renames without ever replacing: *exists is set (and an error returned) when `to` exists.
  Status rename(std::string_view from, std::string_view to, bool* exists) const;

 private:
  explicit SlotDir(std::string dir) : dir_(std::move(dir)) {}
  bool inside(const std::string& canonical) const;
  std::string dir_;  // canonical, no trailing slash
};

}  // namespace kvstash
