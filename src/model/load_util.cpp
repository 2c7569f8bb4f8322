#include "model/load_util.h"

namespace kvstash {
namespace {

std::string shape_str(const GgufTensorInfo& t) {
  std::string s = "[";
  for (uint32_t d = 0; d < t.n_dims; ++d) s += (d ? ", " : "") + std::to_string(t.ne[d]);
  return s + "]";
}

}  // namespace

Result<MatRef> load_mat(const GgufFile& f, const std::string& name, uint64_t n_cols, uint64_t n_rows) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return not_found("model: missing tensor '" + name + "'");
  if (t->n_dims != 2 || t->ne[0] != n_cols || t->ne[1] != n_rows)
    return invalid_argument("model: tensor '" + name + "' has shape " + shape_str(*t) + ", expected [" + std::to_string(n_cols) + ", " +
                            std::to_string(n_rows) + "]");
  MatRef m;
  m.type = t->type;
  m.data = t->data;
  m.n_rows = static_cast<int64_t>(n_rows);
  m.n_cols = static_cast<int64_t>(n_cols);
  m.row_bytes = t->row_bytes();
  return m;
}

Result<std::vector<MatRef>> load_mat_stack(const GgufFile& f, const std::string& name, uint64_t n_cols, uint64_t n_rows,
                                           uint64_t n_mats) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return not_found("model: missing tensor '" + name + "'");
  if (t->n_dims != 3 || t->ne[0] != n_cols || t->ne[1] != n_rows || t->ne[2] != n_mats)
    return invalid_argument("model: tensor '" + name + "' has shape " + shape_str(*t) + ", expected [" + std::to_string(n_cols) + ", " +
                            std::to_string(n_rows) + ", " + std::to_string(n_mats) + "]");
  std::vector<MatRef> out(n_mats);
  const size_t rb = t->row_bytes();
  for (uint64_t i = 0; i < n_mats; ++i) {
    out[i].type = t->type;
    out[i].data = t->data + i * n_rows * rb;
    out[i].n_rows = static_cast<int64_t>(n_rows);
    out[i].n_cols = static_cast<int64_t>(n_cols);
    out[i].row_bytes = rb;
  }
  return out;
}

Result<const float*> load_vec(const GgufFile& f, const std::string& name, uint64_t n) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return not_found("model: missing tensor '" + name + "'");
  if (t->n_dims != 1 || t->ne[0] != n)
    return invalid_argument("model: tensor '" + name + "' has shape " + shape_str(*t) + ", expected a vector of " + std::to_string(n));
  if (t->type != DType::F32) return unsupported("model: tensor '" + name + "' is " + dtype_name(t->type) + ", expected f32");
  if (reinterpret_cast<uintptr_t>(t->data) % alignof(float) != 0) return corruption("model: tensor '" + name + "' is misaligned");
  return reinterpret_cast<const float*>(t->data);
}

Result<uint32_t> load_u32(const GgufFile& f, const std::string& key, uint32_t lo, uint32_t hi) {
  KV_ASSIGN_OR_RETURN(uint64_t v, f.get_u64(key));
  if (v < lo || v > hi)
    return invalid_argument("model: key '" + key + "' is " + std::to_string(v) + ", expected " + std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<uint32_t>(v);
}

Result<uint32_t> load_u32_or(const GgufFile& f, const std::string& key, uint32_t lo, uint32_t hi, uint32_t def) {
  if (!f.find(key)) return def;
  return load_u32(f, key, lo, hi);
}

Result<float> load_f32_or(const GgufFile& f, const std::string& key, double lo, double hi, float def) {
  if (!f.find(key)) return def;
  KV_ASSIGN_OR_RETURN(double v, f.get_f64(key));
  if (!(v >= lo && v <= hi))
    return invalid_argument("model: key '" + key + "' is " + std::to_string(v) + ", expected " + std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<float>(v);
}

}  // namespace kvstash
