// stories260K (../shared/models), loaded once per test binary and shared by every test that
// reads it (throws, with the loader's message, when the file is missing or invalid).
#pragma once

#include <memory>
#include <stdexcept>

#include "model/model.h"
#include "test_paths.h"

namespace kvstash::test {

inline const Model& stories_model() {
  static std::unique_ptr<Model> m = [] {
    auto r = Model::load(model_path("stories260K.gguf"));
    if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
    return std::move(r).value();
  }();
  return *m;
}

}  // namespace kvstash::test
