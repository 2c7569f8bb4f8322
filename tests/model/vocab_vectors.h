// Tokenizer test vectors in llama.cpp's test-tokenizer-0 format (the .inp/.out files beside the
// vocab-only GGUFs in ../shared/models), shared by the SPM and BPE tokenizer tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvstash::test {

inline std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

// .inp is every text followed by "\n__ggml_vocab_test__\n"; .out has one line per text with its
// ids separated by spaces (tokenized with add_special = false, parse_special = false; the empty
// text has an empty line). *n_out_lines receives the .out line count so callers can check it.
inline std::vector<VocabCase> read_cases(const std::string& base, size_t* n_out_lines) {
  const std::string inp = read_all(base + ".inp");
  const std::string out = read_all(base + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<VocabCase> cases;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) throw std::runtime_error(base + ".inp: text at byte " + std::to_string(pos) + " lacks its separator");
    cases.push_back({inp.substr(pos, next - pos), {}});
    pos = next + sep.size();
  }
  std::vector<std::string> lines;
  for (size_t pos = 0; pos < out.size();) {
    size_t nl = out.find('\n', pos);
    if (nl == std::string::npos) nl = out.size();
    lines.push_back(out.substr(pos, nl - pos));
    pos = nl + 1;
  }
  *n_out_lines = lines.size();
  for (size_t i = 0; i < std::min(lines.size(), cases.size()); ++i) {
    std::istringstream ls(lines[i]);
    int32_t id = 0;
    while (ls >> id) cases[i].ids.push_back(id);
  }
  return cases;
}

}  // namespace kvstash::test
