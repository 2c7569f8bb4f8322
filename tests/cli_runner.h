// Runs the kvstash binary (KVSTASH_BINARY) with arguments, capturing exit code, stdout and stderr
// through files in a caller-owned directory. Shared by the CLI-level tests.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace kvstash::test {

struct Proc {
  int code;
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// `args` is appended to the binary's path in a shell command line (quote as needed).
inline Proc run_kvstash(const std::filesystem::path& dir, const std::string& args) {
  const std::filesystem::path o = dir / "stdout", e = dir / "stderr";
  const std::string cmd = std::string(KVSTASH_BINARY) + " " + args + " >" + o.string() + " 2>" + e.string();
  const int st = std::system(cmd.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), slurp(o), slurp(e)};
}

}  // namespace kvstash::test
