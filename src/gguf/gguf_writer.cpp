#include "gguf/gguf_writer.h"

#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/checked_math.h"
#include "core/le.h"

namespace kvstash {
namespace {

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  size_t n = out.size();
  out.resize(n + sizeof(T));
  store_le(out.data() + n, v);
}

void put_str(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

void gguf_encode_value(const GgufValue& v, std::vector<uint8_t>& out) {
  switch (v.type) {
    case GgufType::U8: case GgufType::BOOL: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case GgufType::I8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case GgufType::U16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case GgufType::I16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case GgufType::U32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case GgufType::I32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case GgufType::U64: put<uint64_t>(out, v.u); break;
    case GgufType::I64: put<int64_t>(out, v.i); break;
    case GgufType::F32: put<float>(out, static_cast<float>(v.f)); break;
    case GgufType::F64: put<double>(out, v.f); break;
    case GgufType::STRING: put_str(out, v.str); break;
    case GgufType::ARRAY:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(out, v.n_elems);
      if (v.elem_type == GgufType::STRING) {
        for (const auto& s : v.strs) put_str(out, s);
      } else if (v.elem_type == GgufType::ARRAY) {
        for (const auto& it : v.items) gguf_encode_value(it, out);
      } else {
        out.insert(out.end(), v.raw.begin(), v.raw.end());
      }
      break;
  }
}

void GgufWriter::set_alignment(uint32_t a) {
  assert(a && (a & (a - 1)) == 0);
  alignment_ = a;
  add_u32("general.alignment", a);
  data_bytes_ = 0;
  for (auto& t : tensors_) {
    uint64_t off;
    (void)checked_align_up(data_bytes_, alignment_, &off);
    t.offset = off;
    data_bytes_ = off + t.n_bytes;
  }
}

void GgufWriter::add_value(const std::string& key, GgufValue v) {
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::add_string(const std::string& key, const std::string& s) {
  GgufValue v;
  v.type = GgufType::STRING;
  v.str = s;
  add_value(key, std::move(v));
}
void GgufWriter::add_u32(const std::string& key, uint32_t x) {
  GgufValue v;
  v.type = GgufType::U32;
  v.u = x;
  add_value(key, std::move(v));
}
void GgufWriter::add_i32(const std::string& key, int32_t x) {
  GgufValue v;
  v.type = GgufType::I32;
  v.i = x;
  add_value(key, std::move(v));
}
void GgufWriter::add_u64(const std::string& key, uint64_t x) {
  GgufValue v;
  v.type = GgufType::U64;
  v.u = x;
  add_value(key, std::move(v));
}
void GgufWriter::add_f32(const std::string& key, float x) {
  GgufValue v;
  v.type = GgufType::F32;
  v.f = x;
  add_value(key, std::move(v));
}
void GgufWriter::add_bool(const std::string& key, bool x) {
  GgufValue v;
  v.type = GgufType::BOOL;
  v.u = x ? 1 : 0;
  add_value(key, std::move(v));
}
void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& s) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem_type = GgufType::STRING;
  v.n_elems = s.size();
  v.strs = s;
  add_value(key, std::move(v));
}
void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& a) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem_type = GgufType::F32;
  v.n_elems = a.size();
  v.raw.resize(a.size() * 4);
  std::memcpy(v.raw.data(), a.data(), v.raw.size());
  add_value(key, std::move(v));
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& a) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem_type = GgufType::I32;
  v.n_elems = a.size();
  v.raw.resize(a.size() * 4);
  std::memcpy(v.raw.data(), a.data(), v.raw.size());
  add_value(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, DType type, std::vector<uint64_t> dims, FillFn fill) {
  assert(!dims.empty() && dims.size() <= kGgufMaxDims);
  uint64_t rows = 1;
  for (size_t d = 1; d < dims.size(); ++d) rows *= dims[d];
  const uint64_t n_bytes = dtype_row_bytes(type, dims[0]) * rows;
  uint64_t off;
  (void)checked_align_up(data_bytes_, alignment_, &off);
  tensors_.push_back({name, type, std::move(dims), n_bytes, off, std::move(fill)});
  data_bytes_ = off + n_bytes;
}

std::vector<uint8_t> GgufWriter::header_bytes() const {
  std::vector<uint8_t> out;
  put<uint32_t>(out, kGgufMagic);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_str(out, k);
    put<uint32_t>(out, static_cast<uint32_t>(v.type));
    gguf_encode_value(v, out);
  }
  for (const auto& t : tensors_) {
    put_str(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(out, d);
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, t.offset);
  }
  uint64_t padded;
  (void)checked_align_up(out.size(), alignment_, &padded);
  out.resize(padded, 0);
  return out;
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  std::vector<uint8_t> out = header_bytes();
  const size_t base = out.size();
  out.resize(base + data_bytes_, 0);
  for (const auto& t : tensors_)
    if (t.fill) t.fill(out.data() + base + t.offset, t.n_bytes);
  return out;
}

Status GgufWriter::write_file(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return io_error("gguf: cannot create '" + tmp + "': " + std::strerror(errno));
  auto fail = [&](const std::string& what) {
    int e = errno;
    std::fclose(f);
    std::remove(tmp.c_str());
    return io_error("gguf: " + what + " '" + tmp + "': " + std::strerror(e));
  };
  std::vector<uint8_t> hdr = header_bytes();
  if (std::fwrite(hdr.data(), 1, hdr.size(), f) != hdr.size()) return fail("write failed on");
  uint64_t written = 0;
  std::vector<uint8_t> buf;
  for (const auto& t : tensors_) {
    if (t.offset > written) {
      std::vector<uint8_t> pad(t.offset - written, 0);
      if (std::fwrite(pad.data(), 1, pad.size(), f) != pad.size()) return fail("write failed on");
      written = t.offset;
    }
    buf.assign(t.n_bytes, 0);
    if (t.fill) t.fill(buf.data(), t.n_bytes);
    if (std::fwrite(buf.data(), 1, buf.size(), f) != buf.size()) return fail("write failed on");
    written += t.n_bytes;
  }
  if (std::fflush(f) != 0) return fail("flush failed on");
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    return io_error("gguf: close failed on '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    return io_error("gguf: cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(e));
  }
  return Status::ok();
}

}  // namespace kvstash
