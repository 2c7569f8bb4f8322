// Typed lookups of an architecture's tensors and keys in a GGUF, for the arch_<name>.cpp loaders.
// Every failure names the tensor or key and says what was expected (the file is input).
// Thread-safe: pure functions over a read-only GgufFile.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/status.h"
#include "gguf/gguf_reader.h"

namespace kvstash {

// A 2-D weight [n_rows, n_cols] (GGUF ne = [n_cols, n_rows]).
Result<MatRef> load_mat(const GgufFile& f, const std::string& name, uint64_t n_cols, uint64_t n_rows);
// A 3-D weight [n_mats, n_rows, n_cols] (GGUF ne = [n_cols, n_rows, n_mats]), as one MatRef per
// outer index (an expert, a head): matrix i starts i * n_rows rows into the tensor.
Result<std::vector<MatRef>> load_mat_stack(const GgufFile& f, const std::string& name, uint64_t n_cols, uint64_t n_rows,
                                           uint64_t n_mats);
// A 1-D f32 vector of n elements.
Result<const float*> load_vec(const GgufFile& f, const std::string& name, uint64_t n);
// An integer key in [lo, hi]; the _or variants return `def` when the key is absent.
Result<uint32_t> load_u32(const GgufFile& f, const std::string& key, uint32_t lo, uint32_t hi);
Result<uint32_t> load_u32_or(const GgufFile& f, const std::string& key, uint32_t lo, uint32_t hi, uint32_t def);
// A float key in [lo, hi] (any numeric GGUF type), or `def` when absent.
Result<float> load_f32_or(const GgufFile& f, const std::string& key, double lo, double hi, float def);

}  // namespace kvstash
