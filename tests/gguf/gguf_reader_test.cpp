// GgufFile (reader) tests: hand-made malformed files, real fixtures, truncation sweeps and the
// typed accessors. Round trips of every value type live in gguf_writer_test.cpp.
// Every parse copies its bytes into an exactly-sized heap buffer so ASan reports any over-read.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/le.h"
#include "core/status.h"
#include "gguf/gguf_reader.h"
#include "gguf/gguf_types.h"
#include "gguf/gguf_writer.h"
#include "test_paths.h"

#if defined(__SANITIZE_ADDRESS__)
#define KVSTASH_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVSTASH_TEST_ASAN 1
#endif
#endif
#ifdef KVSTASH_TEST_ASAN
// From <sanitizer/allocator_interface.h>, which not every toolchain installs.
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*, size_t),
                                                         void (*free_hook)(const volatile void*));
#endif

namespace kvstash {
namespace {

namespace fs = std::filesystem;

using Bytes = std::vector<uint8_t>;

constexpr uint64_t kHeaderBytes = 24;  // magic u32, version u32, n_tensors u64, n_kv u64
constexpr size_t kVersionOffset = 4;
constexpr size_t kTensorCountOffset = 8;
constexpr size_t kKvCountOffset = 16;

// ---- byte helpers ----

// Little-endian byte assembler for hand-made files. Never validates: that is the point.
class ByteBuilder {
 public:
  template <typename T>
  ByteBuilder& put(T v) {
    const size_t n = b_.size();
    b_.resize(n + sizeof(T));
    store_le(b_.data() + n, v);
    return *this;
  }
  ByteBuilder& u8(uint8_t v) { return put(v); }
  ByteBuilder& u32(uint32_t v) { return put(v); }
  ByteBuilder& u64(uint64_t v) { return put(v); }
  ByteBuilder& raw(std::string_view s) {
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  ByteBuilder& zeros(size_t n) {
    b_.resize(b_.size() + n, 0);
    return *this;
  }
  ByteBuilder& str(std::string_view s) { return u64(s.size()).raw(s); }
  ByteBuilder& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return u32(kGgufMagic).u32(version).u64(n_tensors).u64(n_kv);
  }
  // Key and type tag; the caller appends the value.
  ByteBuilder& key(std::string_view k, GgufType t) { return str(k).u32(static_cast<uint32_t>(t)); }
  ByteBuilder& key_raw_type(std::string_view k, uint32_t t) { return str(k).u32(t); }
  ByteBuilder& kv_u32(std::string_view k, uint32_t v) { return key(k, GgufType::U32).u32(v); }
  ByteBuilder& kv_string(std::string_view k, std::string_view v) { return key(k, GgufType::STRING).str(v); }
  // Array header: element type and length; the caller appends the elements.
  ByteBuilder& array_head(GgufType elem, uint64_t n) { return u32(static_cast<uint32_t>(elem)).u64(n); }
  ByteBuilder& tensor_info(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) u64(d);
    return u32(type).u64(offset);
  }
  ByteBuilder& pad_to(uint64_t align) {
    while (b_.size() % align) b_.push_back(0);
    return *this;
  }
  size_t size() const { return b_.size(); }
  const Bytes& bytes() const { return b_; }

 private:
  Bytes b_;
};

template <typename T>
void patch(Bytes& b, size_t off, T v) {
  ASSERT_LE(off + sizeof(T), b.size());
  store_le(b.data() + off, v);
}

template <typename T>
T peek(const Bytes& b, size_t off) {
  EXPECT_LE(off + sizeof(T), b.size());
  return off + sizeof(T) <= b.size() ? load_le<T>(b.data() + off) : T{};
}

// Offset just past the length-prefixed string `s` in `b` (its one occurrence); 0 if absent.
size_t after_string(const Bytes& b, std::string_view s) {
  Bytes needle(8);
  store_le<uint64_t>(needle.data(), s.size());
  needle.insert(needle.end(), s.begin(), s.end());
  auto it = std::search(b.begin(), b.end(), needle.begin(), needle.end());
  EXPECT_NE(it, b.end()) << "string '" << s << "' not found";
  if (it == b.end()) return 0;
  EXPECT_EQ(std::search(it + 1, b.end(), needle.begin(), needle.end()), b.end()) << "string '" << s << "' not unique";
  return static_cast<size_t>(it - b.begin()) + needle.size();
}

// Offset of the first byte of the length-prefixed string `s` (its length field).
size_t string_start(const Bytes& b, std::string_view s) { return after_string(b, s) - 8 - s.size(); }

// Field offsets inside a tensor info, given the tensor's name and dimension count.
size_t tensor_ndims_off(const Bytes& b, std::string_view name) { return after_string(b, name); }
size_t tensor_dim_off(const Bytes& b, std::string_view name, uint32_t d) { return after_string(b, name) + 4 + 8 * d; }
size_t tensor_type_off(const Bytes& b, std::string_view name, uint32_t n_dims) { return after_string(b, name) + 4 + 8 * n_dims; }
size_t tensor_offset_off(const Bytes& b, std::string_view name, uint32_t n_dims) { return tensor_type_off(b, name, n_dims) + 4; }
// Offsets of a kv's type tag and value, given its key.
size_t kv_type_off(const Bytes& b, std::string_view key) { return after_string(b, key); }
size_t kv_value_off(const Bytes& b, std::string_view key) { return after_string(b, key) + 4; }

// ---- parse helpers ----

// The parsed file plus the exactly-sized heap copy it points into.
struct Parsed {
  std::unique_ptr<uint8_t[]> buf;
  Result<std::unique_ptr<GgufFile>> file;
};

Parsed parse(const uint8_t* data, size_t n) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[n]);
  if (n) std::memcpy(buf.get(), data, n);
  const uint8_t* p = buf.get();
  return Parsed{std::move(buf), GgufFile::from_buffer(p, n)};
}
Parsed parse(const Bytes& b) { return parse(b.data(), b.size()); }
Parsed parse_prefix(const Bytes& b, size_t n) { return parse(b.data(), n); }

// Succeeds when parsing `b` fails with `code` and a message containing every fragment.
::testing::AssertionResult refused_status(const Status& st, StatusCode code, const std::vector<std::string>& fragments) {
  if (st.is_ok()) return ::testing::AssertionFailure() << "parse succeeded, expected " << status_code_name(code);
  if (st.code() != code)
    return ::testing::AssertionFailure() << "got " << st.to_string() << ", expected code " << status_code_name(code);
  for (const auto& f : fragments)
    if (st.message().find(f) == std::string::npos)
      return ::testing::AssertionFailure() << "message \"" << st.message() << "\" does not contain \"" << f << "\"";
  return ::testing::AssertionSuccess() << st.to_string();
}

::testing::AssertionResult refused(const Bytes& b, StatusCode code, const std::vector<std::string>& fragments) {
  Parsed p = parse(b);
  return refused_status(p.file.status(), code, fragments);
}

::testing::AssertionResult corrupt(const Bytes& b, const std::vector<std::string>& fragments) {
  return refused(b, StatusCode::Corruption, fragments);
}

GgufWriter::FillFn fill_pattern(uint8_t seed) {
  return [seed](uint8_t* dst, uint64_t n) {
    for (uint64_t k = 0; k < n; ++k) dst[k] = static_cast<uint8_t>(seed + k * 7);
  };
}

// A small valid model: a few kvs and three tensors of different types.
GgufWriter sample_writer() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("test.count", 7);
  w.add_bool("test.flag", true);
  w.add_i32_array("test.ids", {1, -2, 3});
  w.add_string_array("test.words", {"alpha", "", "gamma"});
  w.add_tensor("tok.weight", DType::F32, {8, 2}, fill_pattern(1));   // 64 bytes at 0
  w.add_tensor("blk.q8", DType::Q8_0, {32, 2}, fill_pattern(2));     // 68 bytes at 64
  w.add_tensor("out.weight", DType::F16, {4}, fill_pattern(3));      // 8 bytes at 160
  return w;
}

// One tensor directory entry with arbitrary raw fields, then `data_bytes` zero bytes of data.
Bytes one_tensor_file(const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset = 0, uint64_t data_bytes = 64,
                      std::string_view name = "blk.0.attn_q.weight") {
  ByteBuilder b;
  b.header(1, 1).kv_string("general.architecture", "llama").tensor_info(name, dims, type, offset).pad_to(32).zeros(data_bytes);
  return b.bytes();
}

constexpr uint32_t kF32 = static_cast<uint32_t>(DType::F32);

// ---- a valid baseline, so malformations below are the only thing wrong ----

TEST(GgufReaderTest, SampleWriterOutputParses) {
  const Bytes b = sample_writer().to_bytes();
  Parsed p = parse(b);
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufFile& f = **p.file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 5u);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.file_size(), b.size());
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.data_offset() + 168, b.size());
}

TEST(GgufReaderTest, HandBuiltBaselineParses) {
  const Bytes b = one_tensor_file({16, 1}, kF32);
  Parsed p = parse(b);
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufTensorInfo* t = (*p.file)->find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->n_dims, 2u);
  EXPECT_EQ(t->n_bytes, 64u);
  EXPECT_EQ(t->data, p.buf.get() + (*p.file)->data_offset());
}

// ---- magic and version ----

TEST(GgufReaderTest, EmptyBufferIsRefused) {
  EXPECT_TRUE(corrupt({}, {"0 bytes", "magic"}));
  Result<std::unique_ptr<GgufFile>> r = GgufFile::from_buffer(nullptr, 0);
  EXPECT_TRUE(refused_status(r.status(), StatusCode::Corruption, {"magic"}));
}

TEST(GgufReaderTest, BadMagicIsRefused) {
  const Bytes good = sample_writer().to_bytes();
  for (size_t k = 0; k < 4; ++k) {
    Bytes b = good;
    b[k] ^= 0x20;  // "gGUF", "GgUF", ...
    EXPECT_TRUE(corrupt(b, {"bad magic"})) << "byte " << k;
  }
  for (uint32_t magic : {0u, 0x47475546u /* "FUGG": byte-swapped */, 0x4c4d4747u /* "GGML" */, 0xffffffffu}) {
    Bytes b = good;
    patch<uint32_t>(b, 0, magic);
    EXPECT_TRUE(corrupt(b, {"bad magic"})) << std::hex << magic;
  }
}

TEST(GgufReaderTest, UnsupportedVersionsAreRefused) {
  const Bytes good = sample_writer().to_bytes();
  for (uint32_t v : {0u, 1u, 4u, 5u, 0x03000000u /* big-endian 3 */, 0xffffffffu}) {
    Bytes b = good;
    patch<uint32_t>(b, kVersionOffset, v);
    EXPECT_TRUE(refused(b, StatusCode::Unsupported, {"version " + std::to_string(v)})) << v;
  }
}

TEST(GgufReaderTest, Version1IsRefusedEvenWhenItsHeaderIsShort) {
  // GGUF v1 used u32 counts; the reader must refuse by version before reading counts.
  ByteBuilder b;
  b.u32(kGgufMagic).u32(1).u32(0).u32(0);
  EXPECT_TRUE(refused(b.bytes(), StatusCode::Unsupported, {"version 1"}));
}

TEST(GgufReaderTest, Version2HasTheSameLayout) {
  Bytes b = sample_writer().to_bytes();
  patch<uint32_t>(b, kVersionOffset, 2);
  Parsed p2 = parse(b);
  ASSERT_TRUE(p2.file.is_ok()) << p2.file.status().to_string();
  patch<uint32_t>(b, kVersionOffset, 3);
  Parsed p3 = parse(b);
  ASSERT_TRUE(p3.file.is_ok());
  const GgufFile& f2 = **p2.file;
  const GgufFile& f3 = **p3.file;
  EXPECT_EQ(f2.version(), 2u);
  EXPECT_EQ(f3.version(), 3u);
  EXPECT_EQ(f2.data_offset(), f3.data_offset());
  ASSERT_EQ(f2.metadata().size(), f3.metadata().size());
  for (size_t k = 0; k < f2.metadata().size(); ++k) {
    EXPECT_EQ(f2.metadata()[k].first, f3.metadata()[k].first);
    EXPECT_EQ(f2.metadata()[k].second.to_display(), f3.metadata()[k].second.to_display());
  }
  ASSERT_EQ(f2.tensors().size(), f3.tensors().size());
  for (size_t k = 0; k < f2.tensors().size(); ++k) {
    const GgufTensorInfo& a = f2.tensors()[k];
    const GgufTensorInfo& c = f3.tensors()[k];
    EXPECT_EQ(a.name, c.name);
    EXPECT_EQ(a.offset, c.offset);
    EXPECT_EQ(a.n_bytes, c.n_bytes);
    EXPECT_EQ(0, std::memcmp(a.data, c.data, a.n_bytes));
  }
  EXPECT_EQ(*f2.get_string("general.architecture"), "llama");
}

// ---- truncation at every byte ----

// What the reader must name when the file is cut to `len` bytes, derived from the writer's
// layout (not from the reader): the structure that the cut falls in.
struct Layout {
  std::vector<std::pair<std::string, size_t>> kv_starts;      // key, offset of its length field
  std::vector<std::pair<std::string, size_t>> tensor_starts;  // name, offset of its length field
  size_t infos_end = 0;
  uint64_t data_offset = 0;
  std::vector<GgufTensorInfo> tensors;  // offsets and sizes, in directory order
};

std::string expected_fragment(const Layout& l, uint64_t len) {
  if (len < 4) return "too short for the magic";
  if (len < 8) return "truncated header: version";
  if (len < 16) return "truncated header: tensor count";
  if (len < 24) return "truncated header: metadata count";
  const uint64_t left = len - kHeaderBytes;
  if (13 * l.kv_starts.size() > left) return "metadata count";
  if (32 * l.tensor_starts.size() > left) return "tensor count";
  for (size_t k = 0; k < l.kv_starts.size(); ++k) {
    const size_t end = k + 1 < l.kv_starts.size() ? l.kv_starts[k + 1].second
                                                   : (l.tensor_starts.empty() ? l.infos_end : l.tensor_starts[0].second);
    if (len >= end) continue;
    const auto& [key, start] = l.kv_starts[k];
    if (len < start + 8 + key.size()) return "metadata key #" + std::to_string(k);
    return "key '" + key;  // nested arrays append "[i]" to the key
  }
  for (size_t k = 0; k < l.tensor_starts.size(); ++k) {
    const size_t end = k + 1 < l.tensor_starts.size() ? l.tensor_starts[k + 1].second : l.infos_end;
    if (len >= end) continue;
    const auto& [name, start] = l.tensor_starts[k];
    if (len < start + 8 + name.size()) return "tensor #" + std::to_string(k) + " name";
    return "tensor '" + name + "'";
  }
  if (len < l.data_offset) return "data section starts at";
  for (const auto& t : l.tensors)
    if (l.data_offset + t.offset + t.n_bytes > len) return "tensor '" + t.name + "': data";
  return "";
}

Layout layout_of(const Bytes& b, const GgufFile& f) {
  Layout l;
  for (const auto& kv : f.metadata()) l.kv_starts.emplace_back(kv.first, string_start(b, kv.first));
  for (const auto& t : f.tensors()) l.tensor_starts.emplace_back(t.name, string_start(b, t.name));
  const GgufTensorInfo& last = f.tensors().back();
  l.infos_end = tensor_offset_off(b, last.name, last.n_dims) + 8;
  l.data_offset = f.data_offset();
  l.tensors = f.tensors();
  return l;
}

TEST(GgufReaderTest, TruncationAtEveryByteIsRefusedNamingTheStructure) {
  GgufWriter w;
  GgufValue u8v;
  u8v.type = GgufType::U8;
  u8v.u = 200;
  w.add_value("t.u8", u8v);
  GgufValue i64v;
  i64v.type = GgufType::I64;
  i64v.i = -5;
  w.add_value("t.i64", i64v);
  GgufValue f64v;
  f64v.type = GgufType::F64;
  f64v.f = 0.25;
  w.add_value("t.f64", f64v);
  w.add_string("general.architecture", "llama");
  w.add_u32("t.u32", 9);
  w.add_f32("t.f32", 1.5f);
  w.add_bool("t.bool", false);
  w.add_string_array("t.strs", {"one", "", "three"});
  w.add_f32_array("t.floats", {1.0f, 2.0f});
  GgufValue inner;
  inner.type = GgufType::ARRAY;
  inner.elem_type = GgufType::U16;
  inner.n_elems = 2;
  inner.raw = {1, 0, 2, 0};
  GgufValue nested;
  nested.type = GgufType::ARRAY;
  nested.elem_type = GgufType::ARRAY;
  nested.n_elems = 2;
  nested.items = {inner, inner};
  w.add_value("t.nested", nested);
  w.add_tensor("w.f32", DType::F32, {8, 2}, fill_pattern(1));
  w.add_tensor("w.q4", DType::Q4_0, {32, 2}, fill_pattern(2));
  w.add_tensor("w.bf16", DType::BF16, {4, 1, 2}, fill_pattern(3));
  const Bytes b = w.to_bytes();
  Parsed full = parse(b);
  ASSERT_TRUE(full.file.is_ok()) << full.file.status().to_string();
  const Layout l = layout_of(b, **full.file);

  for (size_t len = 0; len < b.size(); ++len) {
    Parsed p = parse_prefix(b, len);
    ASSERT_TRUE(refused_status(p.file.status(), StatusCode::Corruption, {expected_fragment(l, len)})) << "cut at " << len;
  }
}

// ---- the header counts ----

TEST(GgufReaderTest, AbsurdMetadataCountsAreRefused) {
  const Bytes good = sample_writer().to_bytes();
  // (UINT64_MAX / 13) + 1 makes n_kv * 13 wrap to 10: an unchecked multiply would accept it.
  for (uint64_t n : {uint64_t{1} << 62, uint64_t{1} << 63, UINT64_MAX, UINT64_MAX / 13 + 1, uint64_t{good.size()}}) {
    Bytes b = good;
    patch<uint64_t>(b, kKvCountOffset, n);
    EXPECT_TRUE(corrupt(b, {"metadata count " + std::to_string(n)})) << n;
  }
}

TEST(GgufReaderTest, AbsurdTensorCountsAreRefused) {
  const Bytes good = sample_writer().to_bytes();
  // 2^59 makes n_tensors * 32 wrap to 0.
  for (uint64_t n : {uint64_t{1} << 59, uint64_t{1} << 62, UINT64_MAX, uint64_t{good.size()}}) {
    Bytes b = good;
    patch<uint64_t>(b, kTensorCountOffset, n);
    EXPECT_TRUE(corrupt(b, {"tensor count " + std::to_string(n)})) << n;
  }
}

TEST(GgufReaderTest, CountsThatDisagreeWithTheContentAreRefused) {
  const Bytes good = sample_writer().to_bytes();
  for (int64_t delta : {-1, 1}) {
    Bytes b = good;
    patch<uint64_t>(b, kKvCountOffset, peek<uint64_t>(good, kKvCountOffset) + delta);
    EXPECT_TRUE(corrupt(b, {})) << "n_kv delta " << delta;
  }
  // One tensor too many reads the padding as a directory entry. (One too few is not detectable:
  // the last entry then reads as padding and every tensor still lies inside the file.)
  Bytes b1 = good;
  patch<uint64_t>(b1, kTensorCountOffset, peek<uint64_t>(good, kTensorCountOffset) + 1);
  EXPECT_TRUE(corrupt(b1, {"tensor #3"}));
  // One kv too many in a file with nothing after the metadata: the missing key is named by index.
  ByteBuilder b;
  b.header(0, 2).kv_u32("a.b", 1);
  EXPECT_TRUE(corrupt(b.bytes(), {"metadata count 2"}));  // 13 * 2 > 19 bytes left
  ByteBuilder b2;
  b2.header(0, 2).kv_string("a.b", std::string(40, 'x'));
  EXPECT_TRUE(corrupt(b2.bytes(), {"metadata key #1", "truncated string length"}));
}

// ---- strings ----

TEST(GgufReaderTest, AbsurdKeyLengthsAreRefused) {
  for (uint64_t len : {uint64_t{65536}, uint64_t{1} << 63, UINT64_MAX}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint64_t>(b, string_start(b, "general.architecture"), len);
    EXPECT_TRUE(corrupt(b, {"metadata key #0", "string length " + std::to_string(len)})) << len;
  }
  // Within the key limit but past the end of the file.
  ByteBuilder b;
  b.header(0, 1).u64(1000).raw("abc").u32(4).u32(0);
  EXPECT_TRUE(corrupt(b.bytes(), {"metadata key #0", "string length 1000", "bytes left"}));
}

TEST(GgufReaderTest, LongestKeyIsAcceptedOneMoreIsRefused) {
  for (size_t len : {size_t{65535}, size_t{65536}}) {
    ByteBuilder b;
    b.header(0, 1).kv_u32(std::string(len, 'k'), 1);
    Parsed p = parse(b.bytes());
    if (len == 65535) {
      ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
      EXPECT_EQ(*(*p.file)->get_u64(std::string(len, 'k')), 1u);
    } else {
      EXPECT_TRUE(refused_status(p.file.status(), StatusCode::Corruption, {"metadata key #0", "exceeds limit 65535"}));
    }
  }
}

TEST(GgufReaderTest, EmptyKeyIsRefused) {
  ByteBuilder b;
  b.header(0, 2).kv_u32("a.b", 1).kv_u32("", 2);
  EXPECT_TRUE(corrupt(b.bytes(), {"metadata key #1 is empty"}));
}

TEST(GgufReaderTest, AbsurdStringValueLengthsAreRefused) {
  const Bytes good = sample_writer().to_bytes();
  const size_t off = kv_value_off(good, "general.architecture");
  const uint64_t left = good.size() - off - 8;
  for (uint64_t len : {uint64_t{1} << 63, UINT64_MAX, left + 1, uint64_t{1} << 40}) {
    Bytes b = good;
    patch<uint64_t>(b, off, len);
    EXPECT_TRUE(corrupt(b, {"key 'general.architecture' value", "string length " + std::to_string(len)})) << len;
  }
}

TEST(GgufReaderTest, StringEndingExactlyAtEndOfFileIsAccepted) {
  ByteBuilder b;
  b.header(0, 1).kv_string("general.name", "tail");
  Parsed p = parse(b.bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_EQ(*(*p.file)->get_string("general.name"), "tail");
  Bytes cut = b.bytes();
  patch<uint64_t>(cut, cut.size() - 4 - 8, 5);  // one byte longer than what is left
  EXPECT_TRUE(corrupt(cut, {"key 'general.name' value", "string length 5 exceeds the 4 bytes left"}));
}

TEST(GgufReaderTest, AbsurdStringArrayElementLengthsAreRefused) {
  const Bytes good = sample_writer().to_bytes();
  // test.words = {"alpha", "", "gamma"}: element 1's length field follows "alpha".
  const size_t elem1 = after_string(good, "alpha");
  for (uint64_t len : {uint64_t{1} << 63, UINT64_MAX, uint64_t{1} << 32}) {
    Bytes b = good;
    patch<uint64_t>(b, elem1, len);
    EXPECT_TRUE(corrupt(b, {"key 'test.words' element 1", "string length " + std::to_string(len)})) << len;
  }
}

TEST(GgufReaderTest, AbsurdTensorNameLengthsAreRefused) {
  for (uint64_t len : {uint64_t{4097}, uint64_t{1} << 63, UINT64_MAX}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint64_t>(b, string_start(b, "blk.q8"), len);
    EXPECT_TRUE(corrupt(b, {"tensor #1 name", "string length " + std::to_string(len)})) << len;
  }
  EXPECT_TRUE(parse(one_tensor_file({8}, kF32, 0, 32, std::string(4096, 'n'))).file.is_ok());
  EXPECT_TRUE(corrupt(one_tensor_file({8}, kF32, 0, 32, std::string(4097, 'n')), {"tensor #0 name", "exceeds limit 4096"}));
}

TEST(GgufReaderTest, EmptyTensorNameIsRefused) {
  EXPECT_TRUE(corrupt(one_tensor_file({8}, kF32, 0, 32, ""), {"tensor #0 has an empty name"}));
}

// ---- metadata values ----

TEST(GgufReaderTest, UnknownValueTypesAreRefused) {
  for (uint32_t t : {13u, 14u, 0x80000000u, 0xffffffffu}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint32_t>(b, kv_type_off(b, "test.count"), t);
    EXPECT_TRUE(corrupt(b, {"key 'test.count'", "unknown value type " + std::to_string(t)})) << t;
  }
  ByteBuilder h;
  h.header(0, 2).kv_u32("t.ok", 1).key_raw_type("t.bad", 13).u32(0);
  EXPECT_TRUE(corrupt(h.bytes(), {"key 't.bad'", "unknown value type 13"}));
}

TEST(GgufReaderTest, UnknownArrayElementTypesAreRefused) {
  for (uint32_t t : {13u, 0xffffffffu}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint32_t>(b, kv_value_off(b, "test.ids"), t);
    EXPECT_TRUE(corrupt(b, {"key 'test.ids'", "unknown array element type " + std::to_string(t)})) << t;
  }
  // Inside a nested array: the inner key path is named.
  ByteBuilder b;
  b.header(0, 1).key("t.nested", GgufType::ARRAY).array_head(GgufType::ARRAY, 1).u32(99).u64(0);
  EXPECT_TRUE(corrupt(b.bytes(), {"key 't.nested[0]'", "unknown array element type 99"}));
}

TEST(GgufReaderTest, AbsurdArrayLengthsAreRefused) {
  struct Case {
    GgufType elem;
    uint64_t n;
  };
  // Several of these wrap to a tiny byte count when multiplied by the element size.
  const Case cases[] = {
      {GgufType::U8, uint64_t{1} << 62},       {GgufType::U8, UINT64_MAX},
      {GgufType::BOOL, uint64_t{1} << 62},     {GgufType::U16, uint64_t{1} << 63},
      {GgufType::I32, uint64_t{1} << 62},      {GgufType::F32, uint64_t{1} << 62},
      {GgufType::U64, uint64_t{1} << 61},      {GgufType::F64, uint64_t{1} << 62},
      {GgufType::I64, UINT64_MAX},             {GgufType::STRING, uint64_t{1} << 61},
      {GgufType::STRING, UINT64_MAX},          {GgufType::ARRAY, UINT64_MAX / 12 + 1},
      {GgufType::ARRAY, uint64_t{1} << 62},    {GgufType::U32, 1000},
  };
  for (const Case& c : cases) {
    ByteBuilder b;
    b.header(0, 1).key("t.arr", GgufType::ARRAY).array_head(c.elem, c.n).zeros(64);
    EXPECT_TRUE(corrupt(b.bytes(), {"key 't.arr'", "array of " + std::to_string(c.n) + " " + gguf_type_name(c.elem)}))
        << gguf_type_name(c.elem) << " x " << c.n;
  }
  // Patched into writer output: test.ids is an i32 array of 3.
  for (uint64_t n : {uint64_t{1} << 62, UINT64_MAX, uint64_t{1} << 30}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint64_t>(b, kv_value_off(b, "test.ids") + 4, n);
    EXPECT_TRUE(corrupt(b, {"key 'test.ids'", "array of " + std::to_string(n)})) << n;
  }
}

TEST(GgufReaderTest, BoolValuesOtherThanZeroOrOneAreRefused) {
  for (uint8_t x : {uint8_t{2}, uint8_t{0x80}, uint8_t{0xff}}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint8_t>(b, kv_value_off(b, "test.flag"), x);
    EXPECT_TRUE(corrupt(b, {"key 'test.flag'", "bool value " + std::to_string(x)})) << int{x};
  }
  ByteBuilder b;
  b.header(0, 1).key("t.bools", GgufType::ARRAY).array_head(GgufType::BOOL, 5).u8(0).u8(1).u8(1).u8(2).u8(0);
  EXPECT_TRUE(corrupt(b.bytes(), {"key 't.bools'", "bool array element 3 is 2"}));
}

// `levels` arrays nested inside each other, the innermost holding two u8.
GgufValue nested_array(int levels) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem_type = GgufType::U8;
  v.n_elems = 2;
  v.raw = {7, 9};
  for (int k = 1; k < levels; ++k) {
    GgufValue outer;
    outer.type = GgufType::ARRAY;
    outer.elem_type = GgufType::ARRAY;
    outer.n_elems = 1;
    outer.items = {v};
    v = outer;
  }
  return v;
}

TEST(GgufReaderTest, ArraysNestedDeeperThanTheLimitAreRefused) {
  for (int levels : {8, 9, 20}) {
    GgufWriter w;
    w.add_value("t.deep", nested_array(levels));
    Parsed p = parse(w.to_bytes());
    if (levels <= 8) {
      ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
      const GgufValue* v = (*p.file)->find("t.deep");
      for (int k = 1; k < levels; ++k) {
        ASSERT_EQ(v->items.size(), 1u);
        v = &v->items[0];
      }
      EXPECT_EQ(v->raw, (std::vector<uint8_t>{7, 9}));
    } else {
      EXPECT_TRUE(refused_status(p.file.status(), StatusCode::Corruption, {"key 't.deep", "nested deeper than 8"})) << levels;
    }
  }
}

TEST(GgufReaderTest, DuplicateKeysAreRefused) {
  // The writer replaces duplicates, so make one by renaming a key in its output.
  GgufWriter w;
  w.add_u32("dup.aaa", 1);
  w.add_u32("dup.bbb", 2);
  Bytes b = w.to_bytes();
  const size_t name = after_string(b, "dup.bbb") - 3;
  std::memcpy(b.data() + name, "aaa", 3);
  EXPECT_TRUE(corrupt(b, {"duplicate metadata key 'dup.aaa'"}));
  // Same key with a different type.
  ByteBuilder h;
  h.header(0, 2).kv_string("general.name", "x").kv_u32("general.name", 3);
  EXPECT_TRUE(corrupt(h.bytes(), {"duplicate metadata key 'general.name'"}));
}

// ---- general.alignment ----

TEST(GgufReaderTest, NonPowerOfTwoAlignmentIsRefused) {
  for (uint32_t a : {0u, 3u, 48u, 96u, 0x80000001u, 0xffffffffu}) {
    ByteBuilder b;
    b.header(0, 1).kv_u32("general.alignment", a);
    EXPECT_TRUE(corrupt(b.bytes(), {"'general.alignment'", "power of two"})) << a;
    GgufWriter w = sample_writer();
    w.set_alignment(64);
    Bytes wb = w.to_bytes();
    patch<uint32_t>(wb, kv_value_off(wb, "general.alignment"), a);
    EXPECT_TRUE(corrupt(wb, {"'general.alignment'", "power of two"})) << a;
  }
}

TEST(GgufReaderTest, AlignmentOfTheWrongTypeIsRefused) {
  struct Case {
    GgufType type;
    Bytes value;
  };
  const Case cases[] = {
      {GgufType::U64, {32, 0, 0, 0, 0, 0, 0, 0}},
      {GgufType::I32, {32, 0, 0, 0}},
      {GgufType::U16, {32, 0}},
      {GgufType::U8, {32}},
      {GgufType::F32, {0, 0, 0, 0x42}},  // 32.0f
      {GgufType::STRING, {2, 0, 0, 0, 0, 0, 0, 0, '3', '2'}},
      {GgufType::ARRAY, {4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0}},  // [u32 32]
  };
  for (const Case& c : cases) {
    ByteBuilder b;
    b.header(0, 1).key("general.alignment", c.type);
    Bytes bytes = b.bytes();
    bytes.insert(bytes.end(), c.value.begin(), c.value.end());
    EXPECT_TRUE(corrupt(bytes, {"'general.alignment'", std::string("type ") + gguf_type_name(c.type), "expected u32"}))
        << gguf_type_name(c.type);
  }
}

TEST(GgufReaderTest, HugeAlignmentPushesDataPastTheEnd) {
  ByteBuilder b;
  b.header(1, 1).kv_u32("general.alignment", 0x80000000u).tensor_info("w", {8}, kF32, 0).pad_to(32).zeros(32);
  EXPECT_TRUE(corrupt(b.bytes(), {"data section starts at 2147483648"}));
  // With no tensors the data section may start past the end (vocab-only files).
  ByteBuilder v;
  v.header(0, 1).kv_u32("general.alignment", 0x80000000u);
  Parsed p = parse(v.bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_EQ((*p.file)->alignment(), 0x80000000u);
}

// ---- tensor directory ----

TEST(GgufReaderTest, ZeroDimensionCountIsRefused) {
  EXPECT_TRUE(corrupt(one_tensor_file({}, kF32), {"tensor 'blk.0.attn_q.weight'", "0 dimensions, expected 1 to 4"}));
}

TEST(GgufReaderTest, ZeroSizedDimensionsAreRefused) {
  for (uint32_t d = 0; d < 4; ++d) {
    std::vector<uint64_t> dims = {8, 2, 1, 1};
    dims[d] = 0;
    EXPECT_TRUE(corrupt(one_tensor_file(dims, kF32), {"tensor 'blk.0.attn_q.weight'", "dimension " + std::to_string(d) + " is 0"}))
        << d;
  }
  Bytes b = sample_writer().to_bytes();
  patch<uint64_t>(b, tensor_dim_off(b, "blk.q8", 1), 0);
  EXPECT_TRUE(corrupt(b, {"tensor 'blk.q8'", "dimension 1 is 0"}));
}

TEST(GgufReaderTest, TooManyDimensionsAreRefused) {
  EXPECT_TRUE(corrupt(one_tensor_file({8, 1, 1, 1, 1}, kF32), {"tensor 'blk.0.attn_q.weight'", "5 dimensions"}));
  for (uint32_t n : {5u, 64u, 0xffffffffu}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint32_t>(b, tensor_ndims_off(b, "out.weight"), n);
    EXPECT_TRUE(corrupt(b, {"tensor 'out.weight'", std::to_string(n) + " dimensions"})) << n;
  }
}

TEST(GgufReaderTest, OverflowingDimensionsAreRefused) {
  struct Case {
    std::vector<uint64_t> dims;
    const char* what;
  };
  const uint64_t k40 = uint64_t{1} << 40;
  const Case cases[] = {
      {{k40, k40}, "element count overflows"},                                 // 2^80
      {{8, k40, k40}, "element count overflows"},                              // rows overflow
      {{uint64_t{1} << 16, 1u << 16, 1u << 16, 1u << 16}, "element count overflows"},  // exactly 2^64
      {{uint64_t{1} << 32, uint64_t{1} << 32}, "element count overflows"},     // exactly 2^64
      {{uint64_t{1} << 21, 1u << 21, 1u << 21}, "element count overflows"},    // 2^63 > INT64_MAX
      {{k40, k40, k40, k40}, "element count overflows"},
      {{uint64_t{1} << 63}, "dimension 0 is 9223372036854775808"},
      {{8, UINT64_MAX}, "dimension 1 is 18446744073709551615"},
      {{uint64_t{1} << 31, uint64_t{1} << 31}, "byte size overflows"},         // 2^62 elems, 2^64 bytes
      {{uint64_t{1} << 62}, "overflows"},                                      // one row of 2^64 bytes
  };
  for (const Case& c : cases) {
    std::string dims;
    for (uint64_t d : c.dims) dims += std::to_string(d) + " ";
    EXPECT_TRUE(corrupt(one_tensor_file(c.dims, kF32), {"tensor 'blk.0.attn_q.weight'", c.what})) << dims;
  }
  // Each dim 2^40 patched into writer output.
  Bytes b = sample_writer().to_bytes();
  patch<uint64_t>(b, tensor_dim_off(b, "tok.weight", 0), k40);
  patch<uint64_t>(b, tensor_dim_off(b, "tok.weight", 1), k40);
  EXPECT_TRUE(corrupt(b, {"tensor 'tok.weight'", "element count overflows"}));
}

TEST(GgufReaderTest, RowOverflowIsNotReportedAsABlockSizeMismatch) {
  Parsed p = parse(one_tensor_file({uint64_t{1} << 62}, kF32));
  ASSERT_FALSE(p.file.is_ok());
  EXPECT_EQ(p.file.status().message().find("block size"), std::string::npos) << p.file.status().message();
}

TEST(GgufReaderTest, RowsThatAreNotWholeBlocksAreRefused) {
  EXPECT_TRUE(corrupt(one_tensor_file({33, 2}, static_cast<uint32_t>(DType::Q8_0)),
                      {"tensor 'blk.0.attn_q.weight'", "row of 33 elements", "q8_0 block size 32"}));
  EXPECT_TRUE(corrupt(one_tensor_file({16}, static_cast<uint32_t>(DType::Q4_0)), {"q4_0 block size 32"}));
}

TEST(GgufReaderTest, UnknownTensorTypesAreUnsupported) {
  // 3 = Q4_1, 12 = Q4_K in ggml: real types kvstash does not support; the rest are not types at all.
  for (uint32_t t : {3u, 6u, 12u, 31u, 1000u, 0xffffffffu}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint32_t>(b, tensor_type_off(b, "blk.q8", 2), t);
    EXPECT_TRUE(refused(b, StatusCode::Unsupported, {"tensor 'blk.q8'", "tensor type id " + std::to_string(t)})) << t;
  }
}

TEST(GgufReaderTest, MisalignedOffsetsAreRefused) {
  for (uint64_t off : {uint64_t{1}, uint64_t{16}, uint64_t{31}, uint64_t{33}, UINT64_MAX}) {
    Bytes b = sample_writer().to_bytes();
    patch<uint64_t>(b, tensor_offset_off(b, "out.weight", 1), off);
    EXPECT_TRUE(corrupt(b, {"tensor 'out.weight'", "data offset " + std::to_string(off), "alignment 32"})) << off;
  }
  // Custom alignment 64: 32 is no longer aligned.
  GgufWriter w = sample_writer();
  w.set_alignment(64);
  Bytes b = w.to_bytes();
  patch<uint64_t>(b, tensor_offset_off(b, "out.weight", 1), 224);
  EXPECT_TRUE(corrupt(b, {"tensor 'out.weight'", "data offset 224", "alignment 64"}));
}

TEST(GgufReaderTest, SmallerAlignmentAllowsSmallerOffsets) {
  ByteBuilder b;
  b.header(2, 1).kv_u32("general.alignment", 4).tensor_info("a", {3}, kF32, 0).tensor_info("b", {1}, kF32, 12).pad_to(4).zeros(16);
  Parsed p = parse(b.bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_EQ((*p.file)->alignment(), 4u);
  EXPECT_EQ((*p.file)->find_tensor("b")->offset, 12u);
}

TEST(GgufReaderTest, TensorDataPastTheEndIsRefused) {
  const Bytes good = sample_writer().to_bytes();
  // out.weight: F16 [4], 8 bytes at 160; the file ends right after it.
  for (uint64_t off : {uint64_t{192}, uint64_t{1} << 32, uint64_t{1} << 63, UINT64_MAX - 31 /* offset + size wraps */}) {
    Bytes b = good;
    patch<uint64_t>(b, tensor_offset_off(b, "out.weight", 1), off);
    EXPECT_TRUE(corrupt(b, {"tensor 'out.weight'", "runs past the end of the data section"})) << off;
  }
  // Growing a dimension by one row pushes the end past the file.
  Bytes b = good;
  patch<uint64_t>(b, tensor_dim_off(b, "out.weight", 0), 8);
  EXPECT_TRUE(corrupt(b, {"tensor 'out.weight'", "+16)", "168 bytes"}));
  // One byte short of the last tensor.
  EXPECT_TRUE(corrupt(Bytes(good.begin(), good.end() - 1), {"tensor 'out.weight'", "runs past the end"}));
  // Huge but valid dimensions: the sizes are fine, the file is not.
  EXPECT_TRUE(corrupt(one_tensor_file({uint64_t{1} << 30, uint64_t{1} << 30}, kF32), {"tensor 'blk.0.attn_q.weight'", "runs past"}));
  EXPECT_TRUE(corrupt(one_tensor_file({uint64_t{1} << 62}, static_cast<uint32_t>(DType::Q8_0)), {"runs past"}));
}

TEST(GgufReaderTest, DataSectionStartingPastTheEndIsRefused) {
  const Bytes good = sample_writer().to_bytes();
  Parsed full = parse(good);
  ASSERT_TRUE(full.file.is_ok());
  const uint64_t data_offset = (*full.file)->data_offset();
  const Layout l = layout_of(good, **full.file);
  ASSERT_LT(l.infos_end, data_offset) << "the sample needs padding before its data section";
  // Cut inside the padding between the tensor directory and the data section.
  for (uint64_t len = l.infos_end; len < data_offset; ++len)
    EXPECT_TRUE(corrupt(Bytes(good.begin(), good.begin() + static_cast<ptrdiff_t>(len)),
                        {"data section starts at " + std::to_string(data_offset)}));
  // Cut exactly at the data section: nothing for the first tensor.
  EXPECT_TRUE(corrupt(Bytes(good.begin(), good.begin() + static_cast<ptrdiff_t>(data_offset)),
                      {"tensor 'tok.weight'", "(0 bytes)"}));
}

TEST(GgufReaderTest, DuplicateTensorNamesAreRefused) {
  GgufWriter w;
  w.add_tensor("blk.0.ffn_up.weight", DType::F32, {8}, fill_pattern(1));
  w.add_tensor("blk.0.ffn_up.weight", DType::F32, {8}, fill_pattern(2));
  EXPECT_TRUE(corrupt(w.to_bytes(), {"duplicate tensor name 'blk.0.ffn_up.weight'"}));
  // Renamed in writer output.
  GgufWriter w2;
  w2.add_tensor("x.aa", DType::F32, {8}, nullptr);
  w2.add_tensor("x.bb", DType::F32, {8}, nullptr);
  Bytes b = w2.to_bytes();
  std::memcpy(b.data() + after_string(b, "x.bb") - 2, "aa", 2);
  EXPECT_TRUE(corrupt(b, {"duplicate tensor name 'x.aa'"}));
}

TEST(GgufReaderTest, OverlappingTensorsAreRefused) {
  // tok.weight [0, 64), blk.q8 [64, 132), out.weight [160, 168).
  struct Case {
    const char* name;
    uint32_t n_dims;
    uint64_t offset;
    std::string first, second;  // lower offset first
  };
  const Case cases[] = {
      {"blk.q8", 2, 0, "tok.weight", "blk.q8"},        // same start
      {"blk.q8", 2, 32, "tok.weight", "blk.q8"},       // starts inside
      {"out.weight", 1, 96, "blk.q8", "out.weight"},   // contained
      {"out.weight", 1, 128, "blk.q8", "out.weight"},  // straddles the end
      {"tok.weight", 2, 96, "blk.q8", "tok.weight"},
  };
  for (const Case& c : cases) {
    Bytes b = sample_writer().to_bytes();
    patch<uint64_t>(b, tensor_offset_off(b, c.name, c.n_dims), c.offset);
    // Which of two same-offset tensors sorts first is unspecified: require both names.
    EXPECT_TRUE(corrupt(b, {"overlaps", "'" + c.first + "'", "'" + c.second + "'"})) << c.name << " at " << c.offset;
  }
  // A tensor that overlaps a non-neighbour in directory order, and one spanning two others.
  ByteBuilder h;
  h.header(3, 0).tensor_info("a", {8}, kF32, 64).tensor_info("b", {8}, kF32, 128).tensor_info("big", {64}, kF32, 0).pad_to(32).zeros(256);
  EXPECT_TRUE(corrupt(h.bytes(), {"overlaps", "'big'", "'a'"}));
}

TEST(GgufReaderTest, TouchingAndOutOfOrderTensorsAreAccepted) {
  ByteBuilder h;
  h.header(3, 0).tensor_info("c", {8}, kF32, 64).tensor_info("a", {8}, kF32, 0).tensor_info("b", {8}, kF32, 32).pad_to(32).zeros(96);
  Parsed p = parse(h.bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_EQ((*p.file)->tensors()[0].name, "c");
  EXPECT_EQ((*p.file)->find_tensor("b")->data, p.buf.get() + (*p.file)->data_offset() + 32);
}

TEST(GgufReaderTest, TrailingBytesAfterTheLastTensorAreAccepted) {
  Bytes b = sample_writer().to_bytes();
  b.resize(b.size() + 100, 0xee);
  Parsed p = parse(b);
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_EQ((*p.file)->file_size(), b.size());
}

// ---- claimed counts must not drive allocation ----

#ifdef KVSTASH_TEST_ASAN
std::atomic<bool> g_count_allocs{false};
std::atomic<uint64_t> g_allocated_bytes{0};
void count_malloc(const volatile void*, size_t n) {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocated_bytes.fetch_add(n, std::memory_order_relaxed);
}
void ignore_free(const volatile void*) {}

// Bytes allocated while parsing `b` (ASan builds only), and whether the parse succeeded.
uint64_t bytes_allocated_by_parse(const Bytes& b, Status* st) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[b.size()]);
  std::memcpy(buf.get(), b.data(), b.size());
  g_allocated_bytes = 0;
  g_count_allocs = true;
  auto r = GgufFile::from_buffer(buf.get(), b.size());
  g_count_allocs = false;
  *st = r.status();
  return g_allocated_bytes;
}

// Built only in the ASan build (tests/test.sh runs that build too): it needs ASan's allocation hooks.
TEST(GgufReaderTest, ClaimedCountsDoNotDriveAllocation) {
  static const bool installed = __sanitizer_install_malloc_and_free_hooks(count_malloc, ignore_free) != 0;
  ASSERT_TRUE(installed);
  constexpr size_t kSize = size_t{4} << 20;
  struct Case {
    const char* what;
    Bytes bytes;
  };
  std::vector<Case> cases;
  {  // as many kvs as could fit, all zero bytes (the first key is empty)
    ByteBuilder b;
    b.header(0, (kSize - kHeaderBytes) / 13);
    cases.push_back({"n_kv", b.bytes()});
  }
  {
    ByteBuilder b;
    b.header((kSize - kHeaderBytes) / 32, 0);
    cases.push_back({"n_tensors", b.bytes()});
  }
  {  // arrays of arrays, each level claiming as many items as could fit
    ByteBuilder b;
    b.header(0, 1).key("t.nest", GgufType::ARRAY);
    for (int d = 0; d < 9; ++d) b.array_head(GgufType::ARRAY, (kSize - b.size() - 12) / 12);
    cases.push_back({"nested", b.bytes()});
  }
  {  // an array of strings claiming as many as could fit, the first one absurdly long
    ByteBuilder b;
    b.header(0, 1).key("t.strs", GgufType::ARRAY).array_head(GgufType::STRING, (kSize - b.size() - 12) / 8).u64(UINT64_MAX);
    cases.push_back({"strings", b.bytes()});
  }
  for (Case& c : cases) {
    c.bytes.resize(kSize, 0);
    Status st;
    const uint64_t allocated = bytes_allocated_by_parse(c.bytes, &st);
    EXPECT_EQ(st.code(), StatusCode::Corruption) << c.what << ": " << st.to_string();
    EXPECT_LT(allocated, kSize / 4) << c.what << ": " << st.to_string();
  }
}
#endif  // KVSTASH_TEST_ASAN

// ---- real fixtures ----

TEST(GgufReaderTest, Stories260K) {
  auto r = GgufFile::open(test::model_path("stories260K.gguf"));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 48u);
  EXPECT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), 14176u);
  EXPECT_EQ(*f.get_string("general.architecture"), "llama");
  EXPECT_EQ(*f.get_u64("llama.embedding_length"), 64u);
  EXPECT_EQ(*f.get_u64("llama.block_count"), 5u);
  EXPECT_EQ(*f.get_u64("llama.attention.head_count"), 8u);
  EXPECT_EQ(*f.get_u64("llama.attention.head_count_kv"), 4u);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.get_f64("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  auto toks = f.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  ASSERT_TRUE(toks.is_ok());
  EXPECT_EQ((*toks)->strs.size(), 512u);
  EXPECT_EQ((*toks)->n_elems, 512u);

  const GgufTensorInfo* t = f.find_tensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->n_dims, 2u);
  EXPECT_EQ(t->ne[0], 64u);
  EXPECT_EQ(t->ne[1], 512u);
  EXPECT_EQ(t->type, DType::F32);
  EXPECT_EQ(t->offset, 0u);
  EXPECT_EQ(t->n_bytes, dtype_row_bytes(DType::F32, 64) * 512);
  EXPECT_EQ(t->data, f.bytes() + f.data_offset());
  uint64_t end = 0;
  for (const auto& ti : f.tensors()) {
    EXPECT_EQ(ti.offset % f.alignment(), 0u) << ti.name;
    EXPECT_EQ(ti.n_bytes, dtype_row_bytes(ti.type, ti.ne[0]) * ti.n_rows()) << ti.name;
    EXPECT_EQ(f.find_tensor(ti.name), &ti);
    end = std::max(end, f.data_offset() + ti.offset + ti.n_bytes);
  }
  EXPECT_EQ(end, f.file_size());
}

TEST(GgufReaderTest, VocabOnlyLlamaSpm) {
  auto r = GgufFile::open(test::model_path("ggml-vocab-llama-spm.gguf"));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const GgufFile& f = **r;
  EXPECT_EQ(f.tensors().size(), 0u);
  EXPECT_EQ(f.metadata().size(), 22u);
  EXPECT_GT(f.data_offset(), f.file_size());  // no padding after the metadata: allowed without tensors
  auto toks = f.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  ASSERT_TRUE(toks.is_ok()) << toks.status().to_string();
  ASSERT_EQ((*toks)->strs.size(), 32000u);
  EXPECT_EQ((*toks)->strs[0], "<unk>");
  EXPECT_EQ((*toks)->strs[1], "<s>");
  EXPECT_EQ((*toks)->strs[2], "</s>");
  auto scores = f.get_array("tokenizer.ggml.scores", GgufType::F32);
  ASSERT_TRUE(scores.is_ok());
  EXPECT_EQ((*scores)->n_elems, 32000u);
  EXPECT_EQ((*scores)->raw.size(), 32000u * 4);
  EXPECT_EQ(*f.get_bool("tokenizer.ggml.add_bos_token"), true);
  EXPECT_EQ(*f.get_bool("tokenizer.ggml.add_eos_token"), false);
  EXPECT_EQ(*f.get_string("tokenizer.ggml.model"), "llama");
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(GgufReaderTest, Stories260KTruncatedAnywhereIsRefused) {
  const Bytes b = read_all(test::model_path("stories260K.gguf"));
  Parsed full = parse(b);
  ASSERT_TRUE(full.file.is_ok()) << full.file.status().to_string();
  const uint64_t data_offset = (*full.file)->data_offset();
  ASSERT_EQ(data_offset, 14176u);
  // Every prefix through the whole header and padding...
  for (uint64_t len = 0; len <= data_offset; ++len) {
    Parsed p = parse_prefix(b, len);
    ASSERT_TRUE(refused_status(p.file.status(), StatusCode::Corruption, {})) << "cut at " << len;
  }
  // ...and a sample inside the tensor data, including the last bytes.
  std::vector<uint64_t> lens;
  for (uint64_t len = data_offset + 1; len < b.size(); len += 4093) lens.push_back(len);
  for (uint64_t k = 1; k <= 8; ++k) lens.push_back(b.size() - k);
  for (uint64_t len : lens) {
    Parsed p = parse_prefix(b, len);
    ASSERT_TRUE(refused_status(p.file.status(), StatusCode::Corruption, {"runs past the end"})) << "cut at " << len;
  }
  EXPECT_TRUE(parse_prefix(b, b.size()).file.is_ok());
}

// ---- GgufFile::open on temp files ----

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = fs::temp_directory_path() /
            ("kvstash_gguf_reader_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + std::to_string(now));
    created_ = fs::create_directory(path_);
  }
  ~TempDir() {
    std::error_code ec;
    if (created_) fs::remove_all(path_, ec);
  }
  bool ok() const { return created_; }
  std::string path(const std::string& name) const { return (path_ / name).string(); }
  std::string write(const std::string& name, const Bytes& b) const {
    std::ofstream out(path(name), std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    return path(name);
  }

 private:
  fs::path path_;
  bool created_ = false;
};

TEST(GgufReaderTest, OpenMapsAValidFile) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const Bytes b = sample_writer().to_bytes();
  const std::string path = dir.write("ok.gguf", b);
  auto r = GgufFile::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const GgufFile& f = **r;
  EXPECT_EQ(f.file_size(), b.size());
  EXPECT_EQ(0, std::memcmp(f.bytes(), b.data(), b.size()));
  const GgufTensorInfo* t = f.find_tensor("blk.q8");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(0, std::memcmp(t->data, b.data() + f.data_offset() + t->offset, t->n_bytes));
}

TEST(GgufReaderTest, OpenRefusesMalformedFilesNamingThePath) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const Bytes good = sample_writer().to_bytes();

  const std::string empty = dir.write("empty.gguf", {});
  EXPECT_TRUE(refused_status(GgufFile::open(empty).status(), StatusCode::Corruption, {"magic", empty}));

  const std::string cut = dir.write("cut.gguf", Bytes(good.begin(), good.begin() + 100));
  EXPECT_TRUE(refused_status(GgufFile::open(cut).status(), StatusCode::Corruption, {cut}));

  Bytes v4 = good;
  patch<uint32_t>(v4, kVersionOffset, 4);
  const std::string p4 = dir.write("v4.gguf", v4);
  EXPECT_TRUE(refused_status(GgufFile::open(p4).status(), StatusCode::Unsupported, {"version 4", p4}));

  Bytes ty = good;
  patch<uint32_t>(ty, tensor_type_off(ty, "tok.weight", 2), 12);
  const std::string pt = dir.write("type.gguf", ty);
  EXPECT_TRUE(refused_status(GgufFile::open(pt).status(), StatusCode::Unsupported, {"tensor 'tok.weight'", pt}));

  const std::string missing = dir.path("missing.gguf");
  EXPECT_TRUE(refused_status(GgufFile::open(missing).status(), StatusCode::IO, {missing}));
  EXPECT_TRUE(refused_status(GgufFile::open(dir.path("")).status(), StatusCode::InvalidArgument, {"not a regular file"}));
}

// ---- typed accessors ----

Parsed accessor_file() {
  GgufWriter w;
  w.add_string("a.str", "hello");
  w.add_u32("a.u32", 42);
  w.add_i32("a.neg", -5);
  w.add_i32("a.pos", 5);
  w.add_u64("a.u64", UINT64_MAX);
  w.add_f32("a.f32", 0.5f);
  w.add_bool("a.bool", true);
  w.add_string_array("a.strs", {"x", "y"});
  w.add_i32_array("a.ints", {1, 2});
  GgufValue i64v;
  i64v.type = GgufType::I64;
  i64v.i = INT64_MIN;
  w.add_value("a.i64min", i64v);
  GgufValue u8v;
  u8v.type = GgufType::U8;
  u8v.u = 1;
  w.add_value("a.u8", u8v);
  return parse(w.to_bytes());
}

TEST(GgufReaderTest, AccessorsReturnTheirValues) {
  Parsed p = accessor_file();
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufFile& f = **p.file;
  EXPECT_EQ(*f.get_string("a.str"), "hello");
  EXPECT_EQ(*f.get_u64("a.u32"), 42u);
  EXPECT_EQ(*f.get_u64("a.pos"), 5u);
  EXPECT_EQ(*f.get_u64("a.u64"), UINT64_MAX);
  EXPECT_EQ(*f.get_u64("a.u8"), 1u);
  EXPECT_EQ(*f.get_f64("a.f32"), 0.5);
  EXPECT_EQ(*f.get_f64("a.neg"), -5.0);
  EXPECT_EQ(*f.get_f64("a.u32"), 42.0);
  EXPECT_EQ(*f.get_f64("a.i64min"), -9223372036854775808.0);
  EXPECT_EQ(*f.get_bool("a.bool"), true);
  auto strs = f.get_array("a.strs", GgufType::STRING);
  ASSERT_TRUE(strs.is_ok());
  EXPECT_EQ((*strs)->strs, (std::vector<std::string>{"x", "y"}));
  auto ints = f.get_array("a.ints", GgufType::I32);
  ASSERT_TRUE(ints.is_ok());
  EXPECT_EQ((*ints)->array_i64(1), 2);
  EXPECT_EQ(f.find("a.missing"), nullptr);
  EXPECT_EQ(f.find_tensor("a.str"), nullptr);
}

TEST(GgufReaderTest, AccessorsReportMissingKeysAsNotFound) {
  Parsed p = accessor_file();
  ASSERT_TRUE(p.file.is_ok());
  const GgufFile& f = **p.file;
  const std::vector<std::string> frag = {"missing key 'no.such'"};
  EXPECT_TRUE(refused_status(f.get_string("no.such").status(), StatusCode::NotFound, frag));
  EXPECT_TRUE(refused_status(f.get_u64("no.such").status(), StatusCode::NotFound, frag));
  EXPECT_TRUE(refused_status(f.get_f64("no.such").status(), StatusCode::NotFound, frag));
  EXPECT_TRUE(refused_status(f.get_bool("no.such").status(), StatusCode::NotFound, frag));
  EXPECT_TRUE(refused_status(f.get_array("no.such", GgufType::STRING).status(), StatusCode::NotFound, frag));
}

TEST(GgufReaderTest, AccessorsReportTypeMismatchesNamingTheKey) {
  Parsed p = accessor_file();
  ASSERT_TRUE(p.file.is_ok());
  const GgufFile& f = **p.file;
  const StatusCode ia = StatusCode::InvalidArgument;
  EXPECT_TRUE(refused_status(f.get_string("a.u32").status(), ia, {"'a.u32'", "type u32", "expected string"}));
  EXPECT_TRUE(refused_status(f.get_string("a.strs").status(), ia, {"'a.strs'", "type array"}));
  EXPECT_TRUE(refused_status(f.get_u64("a.str").status(), ia, {"'a.str'", "type string", "integer"}));
  EXPECT_TRUE(refused_status(f.get_u64("a.f32").status(), ia, {"'a.f32'", "type f32"}));
  EXPECT_TRUE(refused_status(f.get_u64("a.bool").status(), ia, {"'a.bool'", "type bool"}));
  EXPECT_TRUE(refused_status(f.get_u64("a.neg").status(), ia, {"'a.neg'", "-5", "non-negative"}));
  EXPECT_TRUE(refused_status(f.get_u64("a.i64min").status(), ia, {"'a.i64min'", "-9223372036854775808"}));
  EXPECT_TRUE(refused_status(f.get_f64("a.str").status(), ia, {"'a.str'", "expected a number"}));
  EXPECT_TRUE(refused_status(f.get_f64("a.ints").status(), ia, {"'a.ints'", "type array"}));
  EXPECT_TRUE(refused_status(f.get_bool("a.u8").status(), ia, {"'a.u8'", "type u8", "expected bool"}));
  EXPECT_TRUE(refused_status(f.get_array("a.strs", GgufType::I32).status(), ia, {"'a.strs'", "array of string", "expected array of i32"}));
  EXPECT_TRUE(refused_status(f.get_array("a.str", GgufType::STRING).status(), ia, {"'a.str'", "type string", "expected array of string"}));
}

}  // namespace
}  // namespace kvstash
