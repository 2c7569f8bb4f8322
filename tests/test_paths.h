// Where tests find shared fixtures: $KVSTASH_MODELS, else ../shared/models beside the repo.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace kvstash::test {

inline std::string models_dir() {
  if (const char* e = std::getenv("KVSTASH_MODELS"); e && *e) return e;
#ifdef KVSTASH_SOURCE_DIR
  const std::filesystem::path repo = KVSTASH_SOURCE_DIR;
#else
  const std::filesystem::path repo = std::filesystem::absolute(std::filesystem::path(__FILE__)).parent_path().parent_path();
#endif
  return (repo.parent_path() / "shared" / "models").string();
}

// Absolute path of a shared fixture; throws (failing the test) with a clear message if absent.
inline std::string model_path(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(models_dir()) / name;
  if (!std::filesystem::exists(p))
    throw std::runtime_error("fixture '" + p.string() + "' not found: set KVSTASH_MODELS to the shared/models directory");
  return p.string();
}

inline std::string reference_dir() {
  return (std::filesystem::path(models_dir()).parent_path() / "reference").string();
}

}  // namespace kvstash::test
