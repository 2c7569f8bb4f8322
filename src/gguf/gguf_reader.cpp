#include "gguf/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/checked_math.h"
#include "core/le.h"

namespace kvstash {
namespace {

constexpr uint32_t kMaxNesting = 8;           // arrays of arrays, deeper is refused
constexpr uint64_t kMaxKeyBytes = 65535;      // keys are short identifiers
constexpr uint64_t kMaxTensorNameBytes = 4096;
// Counts are only bounds-checked against the bytes left, and an entry takes far more memory than
// its minimum encoding (a 13-byte kv is a 184-byte entry); reserve no more than this up front.
constexpr uint64_t kMaxReserve = 4096;

// Cursor over untrusted bytes. Every read is bounds-checked.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t n) : p_(p), n_(n) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return n_ - pos_; }

  template <typename T>
  bool read(T* out) {
    if (remaining() < sizeof(T)) return false;
    *out = load_le<T>(p_ + pos_);
    pos_ += sizeof(T);
    return true;
  }
  bool read_bytes(uint64_t n, const uint8_t** out) {
    if (remaining() < n) return false;
    *out = p_ + pos_;
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0;
};

std::string at(const Cursor& c) { return " at byte " + std::to_string(c.pos()); }

Status read_string(Cursor& c, uint64_t max_len, const std::string& what, std::string* out) {
  uint64_t len;
  if (!c.read(&len)) return corruption("gguf: " + what + ": truncated string length" + at(c));
  if (len > max_len) return corruption("gguf: " + what + ": string length " + std::to_string(len) + " exceeds limit " + std::to_string(max_len));
  if (len > c.remaining())
    return corruption("gguf: " + what + ": string length " + std::to_string(len) + " exceeds the " +
                      std::to_string(c.remaining()) + " bytes left in the file");
  const uint8_t* p = nullptr;
  (void)c.read_bytes(len, &p);
  out->assign(reinterpret_cast<const char*>(p), len);
  return Status::ok();
}

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::F64); }

Status read_value(Cursor& c, GgufType type, const std::string& key, uint32_t depth, GgufValue* v);

Status read_array(Cursor& c, const std::string& key, uint32_t depth, GgufValue* v) {
  if (depth >= kMaxNesting) return corruption("gguf: key '" + key + "': arrays nested deeper than " + std::to_string(kMaxNesting));
  uint32_t et;
  uint64_t n;
  if (!c.read(&et)) return corruption("gguf: key '" + key + "': truncated array element type" + at(c));
  if (!valid_type(et)) return corruption("gguf: key '" + key + "': unknown array element type " + std::to_string(et));
  if (!c.read(&n)) return corruption("gguf: key '" + key + "': truncated array length" + at(c));
  v->elem_type = static_cast<GgufType>(et);
  v->n_elems = n;
  const uint32_t sb = gguf_scalar_bytes(v->elem_type);
  // Minimum encoded size of one element bounds the count before anything is allocated.
  const uint64_t min_elem = sb ? sb : (v->elem_type == GgufType::STRING ? 8 : 12);
  uint64_t need;
  if (!checked_mul(n, min_elem, &need) || need > c.remaining())
    return corruption("gguf: key '" + key + "': array of " + std::to_string(n) + " " + gguf_type_name(v->elem_type) +
                      " needs at least " + (checked_mul(n, min_elem, &need) ? std::to_string(need) : std::string("2^64+")) +
                      " bytes, " + std::to_string(c.remaining()) + " left in the file");
  if (sb) {
    const uint8_t* p = nullptr;
    (void)c.read_bytes(n * sb, &p);
    v->raw.assign(p, p + n * sb);
    if (v->elem_type == GgufType::BOOL)
      for (uint64_t k = 0; k < n; ++k)
        if (p[k] > 1) return corruption("gguf: key '" + key + "': bool array element " + std::to_string(k) + " is " + std::to_string(p[k]) + ", expected 0 or 1");
  } else if (v->elem_type == GgufType::STRING) {
    v->strs.reserve(std::min(n, kMaxReserve));
    for (uint64_t k = 0; k < n; ++k)
      KV_RETURN_IF_ERROR(read_string(c, UINT64_MAX, "key '" + key + "' element " + std::to_string(k), &v->strs.emplace_back()));
  } else {
    // Grown as items parse, not sized from the claimed count: each nesting level could otherwise
    // allocate 12x the file before a single item is read.
    for (uint64_t k = 0; k < n; ++k) {
      GgufValue& item = v->items.emplace_back();
      item.type = GgufType::ARRAY;
      KV_RETURN_IF_ERROR(read_array(c, key + "[" + std::to_string(k) + "]", depth + 1, &item));
    }
  }
  return Status::ok();
}

Status read_value(Cursor& c, GgufType type, const std::string& key, uint32_t depth, GgufValue* v) {
  v->type = type;
  auto trunc = [&] { return corruption("gguf: key '" + key + "': truncated " + gguf_type_name(type) + " value" + at(c)); };
  switch (type) {
    case GgufType::U8: { uint8_t x; if (!c.read(&x)) return trunc(); v->u = x; break; }
    case GgufType::I8: { int8_t x; if (!c.read(&x)) return trunc(); v->i = x; break; }
    case GgufType::U16: { uint16_t x; if (!c.read(&x)) return trunc(); v->u = x; break; }
    case GgufType::I16: { int16_t x; if (!c.read(&x)) return trunc(); v->i = x; break; }
    case GgufType::U32: { uint32_t x; if (!c.read(&x)) return trunc(); v->u = x; break; }
    case GgufType::I32: { int32_t x; if (!c.read(&x)) return trunc(); v->i = x; break; }
    case GgufType::U64: { uint64_t x; if (!c.read(&x)) return trunc(); v->u = x; break; }
    case GgufType::I64: { int64_t x; if (!c.read(&x)) return trunc(); v->i = x; break; }
    case GgufType::F32: { float x; if (!c.read(&x)) return trunc(); v->f = x; break; }
    case GgufType::F64: { double x; if (!c.read(&x)) return trunc(); v->f = x; break; }
    case GgufType::BOOL: {
      uint8_t x;
      if (!c.read(&x)) return trunc();
      if (x > 1) return corruption("gguf: key '" + key + "': bool value " + std::to_string(x) + ", expected 0 or 1");
      v->u = x;
      break;
    }
    case GgufType::STRING: return read_string(c, UINT64_MAX, "key '" + key + "' value", &v->str);
    case GgufType::ARRAY: return read_array(c, key, depth, v);
  }
  return Status::ok();
}

}  // namespace

GgufFile::~GgufFile() {
  if (map_) munmap(map_, size_);
}

void GgufFile::release_pages(const uint8_t* p, size_t n) const {
  if (!map_ || p < base_ || n > size_ || size_t(p - base_) > size_ - n) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  // A read-only private file mapping never holds modified pages: dropping them loses nothing.
  if (lo < hi) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error("gguf: cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return io_error("gguf: cannot stat '" + path + "': " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_argument("gguf: '" + path + "' is not a regular file");
  }
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* m = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      return io_error("gguf: cannot mmap '" + path + "': " + std::strerror(e));
    }
    f->map_ = m;
    f->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  Status st2 = f->parse();
  if (!st2.is_ok()) return Status(st2.code(), st2.message() + " (file '" + path + "')");
  return f;
}

Result<std::unique_ptr<GgufFile>> GgufFile::from_buffer(const uint8_t* data, size_t size) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->base_ = data;
  f->size_ = size;
  KV_RETURN_IF_ERROR(f->parse());
  return f;
}

Status GgufFile::parse() {
  Cursor c(base_, size_);
  uint32_t magic;
  if (!c.read(&magic)) return corruption("gguf: file is " + std::to_string(size_) + " bytes, too short for the magic");
  if (magic != kGgufMagic) return corruption("gguf: bad magic, expected 'GGUF'");
  if (!c.read(&version_)) return corruption("gguf: truncated header: version");
  if (version_ == 1) return unsupported("gguf: version 1 is not supported (expected 2 or 3)");
  if (version_ < 2 || version_ > 3) return unsupported("gguf: version " + std::to_string(version_) + " is not supported (expected 2 or 3)");
  uint64_t n_tensors, n_kv;
  if (!c.read(&n_tensors)) return corruption("gguf: truncated header: tensor count");
  if (!c.read(&n_kv)) return corruption("gguf: truncated header: metadata count");
  // A kv needs at least 8 (key len) + 4 (type) + 1 bytes; a tensor info at least 8 + 4 + 8 + 4 + 8.
  uint64_t need;
  if (!checked_mul(n_kv, 13, &need) || need > c.remaining())
    return corruption("gguf: metadata count " + std::to_string(n_kv) + " cannot fit in the " + std::to_string(c.remaining()) + " bytes left");
  if (!checked_mul(n_tensors, 32, &need) || need > c.remaining())
    return corruption("gguf: tensor count " + std::to_string(n_tensors) + " cannot fit in the " + std::to_string(c.remaining()) + " bytes left");

  kv_.reserve(std::min(n_kv, kMaxReserve));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    KV_RETURN_IF_ERROR(read_string(c, kMaxKeyBytes, "metadata key #" + std::to_string(k), &key));
    if (key.empty()) return corruption("gguf: metadata key #" + std::to_string(k) + " is empty");
    if (kv_index_.count(key)) return corruption("gguf: duplicate metadata key '" + key + "'");
    uint32_t t;
    if (!c.read(&t)) return corruption("gguf: key '" + key + "': truncated value type" + at(c));
    if (!valid_type(t)) return corruption("gguf: key '" + key + "': unknown value type " + std::to_string(t));
    GgufValue v;
    KV_RETURN_IF_ERROR(read_value(c, static_cast<GgufType>(t), key, 0, &v));
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32) return corruption(std::string("gguf: key 'general.alignment' has type ") + gguf_type_name(a->type) + ", expected u32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      return corruption("gguf: key 'general.alignment' is " + std::to_string(a->u) + ", expected a power of two");
    alignment_ = static_cast<uint32_t>(a->u);
  }

  tensors_.reserve(std::min(n_tensors, kMaxReserve));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo ti;
    KV_RETURN_IF_ERROR(read_string(c, kMaxTensorNameBytes, "tensor #" + std::to_string(k) + " name", &ti.name));
    const std::string tn = "gguf: tensor '" + ti.name + "'";
    if (ti.name.empty()) return corruption("gguf: tensor #" + std::to_string(k) + " has an empty name");
    if (tensor_index_.count(ti.name)) return corruption("gguf: duplicate tensor name '" + ti.name + "'");
    if (!c.read(&ti.n_dims)) return corruption(tn + ": truncated dimension count");
    if (ti.n_dims == 0 || ti.n_dims > kGgufMaxDims)
      return corruption(tn + ": " + std::to_string(ti.n_dims) + " dimensions, expected 1 to " + std::to_string(kGgufMaxDims));
    for (uint32_t d = 0; d < ti.n_dims; ++d) {
      if (!c.read(&ti.ne[d])) return corruption(tn + ": truncated dimension " + std::to_string(d));
      if (ti.ne[d] == 0 || ti.ne[d] > static_cast<uint64_t>(INT64_MAX))
        return corruption(tn + ": dimension " + std::to_string(d) + " is " + std::to_string(ti.ne[d]) + ", expected 1 to 2^63-1");
    }
    uint32_t type_id;
    if (!c.read(&type_id)) return corruption(tn + ": truncated type");
    const DTypeTraits* tr = dtype_traits_by_id(type_id);
    if (!tr) return unsupported(tn + ": tensor type id " + std::to_string(type_id) + " is not supported (f32, f16, bf16, q8_0, q4_0)");
    ti.type = tr->type;
    if (!c.read(&ti.offset)) return corruption(tn + ": truncated data offset");
    if (ti.offset % alignment_ != 0)
      return corruption(tn + ": data offset " + std::to_string(ti.offset) + " is not a multiple of the alignment " + std::to_string(alignment_));
    uint64_t n_rows = 1;
    for (uint32_t d = 1; d < kGgufMaxDims; ++d)
      if (!checked_mul(n_rows, ti.ne[d], &n_rows)) return corruption(tn + ": element count overflows");
    uint64_t n_el;
    if (!checked_mul(n_rows, ti.ne[0], &n_el) || n_el > static_cast<uint64_t>(INT64_MAX)) return corruption(tn + ": element count overflows");
    if (ti.ne[0] % tr->block_elems != 0)
      return corruption(tn + ": row of " + std::to_string(ti.ne[0]) + " elements is not a multiple of the " + tr->name +
                        " block size " + std::to_string(tr->block_elems));
    auto rb = dtype_row_bytes_checked(ti.type, ti.ne[0]);
    if (!rb) return corruption(tn + ": row of " + std::to_string(ti.ne[0]) + " " + tr->name + " elements overflows its byte size");
    if (!checked_mul(*rb, n_rows, &ti.n_bytes)) return corruption(tn + ": byte size overflows");
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  if (!checked_align_up(c.pos(), alignment_, &data_offset_)) return corruption("gguf: data offset overflows");
  if (n_tensors > 0 && data_offset_ > size_)
    return corruption("gguf: data section starts at " + std::to_string(data_offset_) + ", past the end of the " + std::to_string(size_) + "-byte file");
  const uint64_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (auto& ti : tensors_) {
    uint64_t end;
    if (!checked_add(ti.offset, ti.n_bytes, &end) || end > data_size)
      return corruption("gguf: tensor '" + ti.name + "': data [" + std::to_string(ti.offset) + ", +" + std::to_string(ti.n_bytes) +
                        ") runs past the end of the data section (" + std::to_string(data_size) + " bytes)");
    ti.data = base_ + data_offset_ + ti.offset;
  }
  // Tensors must not overlap.
  std::vector<const GgufTensorInfo*> by_off;
  by_off.reserve(tensors_.size());
  for (auto& ti : tensors_) by_off.push_back(&ti);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_off.size(); ++k)
    if (by_off[k - 1]->offset + by_off[k - 1]->n_bytes > by_off[k]->offset)
      return corruption("gguf: tensor '" + by_off[k]->name + "' overlaps tensor '" + by_off[k - 1]->name + "'");
  return Status::ok();
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return not_found("gguf: missing key '" + std::string(key) + "'");
  if (v->type != GgufType::STRING) return invalid_argument("gguf: key '" + std::string(key) + "' has type " + gguf_type_name(v->type) + ", expected string");
  return v->str;
}

Result<uint64_t> GgufFile::get_u64(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return not_found("gguf: missing key '" + std::string(key) + "'");
  if (!v->is_integer()) return invalid_argument("gguf: key '" + std::string(key) + "' has type " + gguf_type_name(v->type) + ", expected an integer");
  const bool is_signed = v->type == GgufType::I8 || v->type == GgufType::I16 || v->type == GgufType::I32 || v->type == GgufType::I64;
  if (is_signed) {
    if (v->i < 0) return invalid_argument("gguf: key '" + std::string(key) + "' is " + std::to_string(v->i) + ", expected a non-negative integer");
    return static_cast<uint64_t>(v->i);
  }
  return v->u;
}

Result<double> GgufFile::get_f64(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return not_found("gguf: missing key '" + std::string(key) + "'");
  if (v->is_float()) return v->f;
  if (v->is_integer()) {
    const bool is_signed = v->type == GgufType::I8 || v->type == GgufType::I16 || v->type == GgufType::I32 || v->type == GgufType::I64;
    return is_signed ? static_cast<double>(v->i) : static_cast<double>(v->u);
  }
  return invalid_argument("gguf: key '" + std::string(key) + "' has type " + gguf_type_name(v->type) + ", expected a number");
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return not_found("gguf: missing key '" + std::string(key) + "'");
  if (v->type != GgufType::BOOL) return invalid_argument("gguf: key '" + std::string(key) + "' has type " + gguf_type_name(v->type) + ", expected bool");
  return v->u != 0;
}

Result<const GgufValue*> GgufFile::get_array(std::string_view key, GgufType elem) const {
  const GgufValue* v = find(key);
  if (!v) return not_found("gguf: missing key '" + std::string(key) + "'");
  if (v->type != GgufType::ARRAY || v->elem_type != elem)
    return invalid_argument("gguf: key '" + std::string(key) + "' has type " + gguf_type_name(v->type) +
                            (v->type == GgufType::ARRAY ? std::string(" of ") + gguf_type_name(v->elem_type) : std::string()) +
                            ", expected array of " + gguf_type_name(elem));
  return v;
}

}  // namespace kvstash
