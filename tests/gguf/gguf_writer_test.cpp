// GgufWriter tests: exact encodings, and round trips of every metadata value type and of the
// tensor directory through GgufWriter -> GgufFile. Malformed inputs live in gguf_reader_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/le.h"
#include "core/status.h"
#include "gguf/gguf_reader.h"
#include "gguf/gguf_types.h"
#include "gguf/gguf_writer.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;

using Bytes = std::vector<uint8_t>;

// The parsed file plus the exactly-sized heap copy it points into (ASan sees any over-read).
struct Parsed {
  std::unique_ptr<uint8_t[]> buf;
  Result<std::unique_ptr<GgufFile>> file;
};

Parsed parse(const Bytes& b) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[b.size()]);
  if (!b.empty()) std::memcpy(buf.get(), b.data(), b.size());
  const uint8_t* p = buf.get();
  return Parsed{std::move(buf), GgufFile::from_buffer(p, b.size())};
}

template <typename T>
Bytes le_bytes(T v) {
  Bytes b(sizeof(T));
  store_le(b.data(), v);
  return b;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes str_bytes(const std::string& s) { return cat({le_bytes<uint64_t>(s.size()), Bytes(s.begin(), s.end())}); }

GgufValue scalar(GgufType t) {
  GgufValue v;
  v.type = t;
  return v;
}
GgufValue unsigned_value(GgufType t, uint64_t x) {
  GgufValue v = scalar(t);
  v.u = x;
  return v;
}
GgufValue signed_value(GgufType t, int64_t x) {
  GgufValue v = scalar(t);
  v.i = x;
  return v;
}
GgufValue float_value(GgufType t, double x) {
  GgufValue v = scalar(t);
  v.f = x;
  return v;
}
GgufValue string_value(const std::string& s) {
  GgufValue v = scalar(GgufType::STRING);
  v.str = s;
  return v;
}

template <typename T>
GgufValue scalar_array(GgufType elem, const std::vector<T>& xs) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = elem;
  v.n_elems = xs.size();
  v.raw.resize(xs.size() * sizeof(T));
  for (size_t k = 0; k < xs.size(); ++k) store_le(v.raw.data() + k * sizeof(T), xs[k]);
  return v;
}

GgufValue string_array(const std::vector<std::string>& xs) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = GgufType::STRING;
  v.n_elems = xs.size();
  v.strs = xs;
  return v;
}

GgufValue array_of_arrays(const std::vector<GgufValue>& items) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = GgufType::ARRAY;
  v.n_elems = items.size();
  v.items = items;
  return v;
}

uint64_t f64_bits(double d) { return load_le<uint64_t>(&d); }
uint32_t f32_bits(float f) { return load_le<uint32_t>(&f); }

GgufWriter::FillFn fill_pattern(uint8_t seed) {
  return [seed](uint8_t* dst, uint64_t n) {
    for (uint64_t k = 0; k < n; ++k) dst[k] = static_cast<uint8_t>(seed + k * 13);
  };
}

Bytes pattern(uint8_t seed, uint64_t n) {
  Bytes b(n);
  fill_pattern(seed)(b.data(), n);
  return b;
}

// Deep comparison of two metadata values, exact to the bit for floats.
void expect_same_value(const GgufValue& want, const GgufValue& got, const std::string& where) {
  ASSERT_EQ(static_cast<uint32_t>(got.type), static_cast<uint32_t>(want.type)) << where;
  switch (want.type) {
    case GgufType::U8: case GgufType::U16: case GgufType::U32: case GgufType::U64: case GgufType::BOOL:
      EXPECT_EQ(got.u, want.u) << where;
      break;
    case GgufType::I8: case GgufType::I16: case GgufType::I32: case GgufType::I64:
      EXPECT_EQ(got.i, want.i) << where;
      break;
    case GgufType::F32:
      EXPECT_EQ(f32_bits(static_cast<float>(got.f)), f32_bits(static_cast<float>(want.f))) << where;
      break;
    case GgufType::F64:
      EXPECT_EQ(f64_bits(got.f), f64_bits(want.f)) << where;
      break;
    case GgufType::STRING:
      EXPECT_EQ(got.str, want.str) << where;
      break;
    case GgufType::ARRAY:
      ASSERT_EQ(static_cast<uint32_t>(got.elem_type), static_cast<uint32_t>(want.elem_type)) << where;
      ASSERT_EQ(got.n_elems, want.n_elems) << where;
      EXPECT_EQ(got.raw, want.raw) << where;
      EXPECT_EQ(got.strs, want.strs) << where;
      ASSERT_EQ(got.items.size(), want.items.size()) << where;
      for (size_t k = 0; k < want.items.size(); ++k)
        expect_same_value(want.items[k], got.items[k], where + "[" + std::to_string(k) + "]");
      break;
  }
}

// Writes `kvs` in order, parses the result and compares every value.
void expect_round_trip(const std::vector<std::pair<std::string, GgufValue>>& kvs) {
  GgufWriter w;
  for (const auto& [k, v] : kvs) w.add_value(k, v);
  Parsed p = parse(w.to_bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufFile& f = **p.file;
  ASSERT_EQ(f.metadata().size(), kvs.size());
  for (size_t k = 0; k < kvs.size(); ++k) {
    EXPECT_EQ(f.metadata()[k].first, kvs[k].first);  // order is preserved
    const GgufValue* v = f.find(kvs[k].first);
    ASSERT_NE(v, nullptr) << kvs[k].first;
    expect_same_value(kvs[k].second, *v, kvs[k].first);
  }
}

// ---- exact encodings ----

TEST(GgufWriterTest, EncodesScalarValuesLittleEndian) {
  struct Case {
    GgufValue v;
    Bytes want;
  };
  const Case cases[] = {
      {unsigned_value(GgufType::U8, 0xab), {0xab}},
      {signed_value(GgufType::I8, -2), {0xfe}},
      {unsigned_value(GgufType::U16, 0x1234), {0x34, 0x12}},
      {signed_value(GgufType::I16, -2), {0xfe, 0xff}},
      {unsigned_value(GgufType::U32, 0x01020304), {4, 3, 2, 1}},
      {signed_value(GgufType::I32, -1), {0xff, 0xff, 0xff, 0xff}},
      {unsigned_value(GgufType::U64, 0x0102030405060708), {8, 7, 6, 5, 4, 3, 2, 1}},
      {signed_value(GgufType::I64, INT64_MIN), {0, 0, 0, 0, 0, 0, 0, 0x80}},
      {float_value(GgufType::F32, 1.0), {0, 0, 0x80, 0x3f}},
      {float_value(GgufType::F64, -2.0), {0, 0, 0, 0, 0, 0, 0, 0xc0}},
      {unsigned_value(GgufType::BOOL, 1), {1}},
      {string_value("ab"), {2, 0, 0, 0, 0, 0, 0, 0, 'a', 'b'}},
  };
  for (const Case& c : cases) {
    Bytes out;
    gguf_encode_value(c.v, out);
    EXPECT_EQ(out, c.want) << gguf_type_name(c.v.type);
  }
}

TEST(GgufWriterTest, EncodesArrays) {
  Bytes out;
  gguf_encode_value(scalar_array<uint16_t>(GgufType::U16, {1, 0x0203}), out);
  EXPECT_EQ(out, cat({le_bytes<uint32_t>(2), le_bytes<uint64_t>(2), {1, 0, 3, 2}}));
  out.clear();
  gguf_encode_value(string_array({"x", ""}), out);
  EXPECT_EQ(out, cat({le_bytes<uint32_t>(8), le_bytes<uint64_t>(2), str_bytes("x"), str_bytes("")}));
  out.clear();
  // Items of an array of arrays carry no type tag of their own: elem type, count, payload.
  gguf_encode_value(array_of_arrays({scalar_array<uint8_t>(GgufType::U8, {5})}), out);
  EXPECT_EQ(out, cat({le_bytes<uint32_t>(9), le_bytes<uint64_t>(1), le_bytes<uint32_t>(0), le_bytes<uint64_t>(1), {5}}));
}

TEST(GgufWriterTest, WritesTheDocumentedFileLayout) {
  GgufWriter w;
  w.add_u32("a.b", 7);
  w.add_tensor("t", DType::F32, {2}, fill_pattern(9));
  const Bytes header = cat({
      le_bytes<uint32_t>(kGgufMagic), le_bytes<uint32_t>(3), le_bytes<uint64_t>(1), le_bytes<uint64_t>(1),
      str_bytes("a.b"), le_bytes<uint32_t>(4), le_bytes<uint32_t>(7),                             // kv
      str_bytes("t"), le_bytes<uint32_t>(1), le_bytes<uint64_t>(2), le_bytes<uint32_t>(0), le_bytes<uint64_t>(0),  // tensor
  });
  ASSERT_EQ(header.size(), 24u + 19 + 33);
  Bytes want = header;
  want.resize(96, 0);  // padded to the default alignment of 32
  EXPECT_EQ(w.header_bytes(), want);
  const Bytes data = pattern(9, 8);
  want.insert(want.end(), data.begin(), data.end());
  EXPECT_EQ(w.to_bytes(), want);
  EXPECT_EQ(Bytes(want.begin(), want.begin() + 4), (Bytes{'G', 'G', 'U', 'F'}));
}

TEST(GgufWriterTest, EmptyWriterMakesAValidFile) {
  GgufWriter w;
  const Bytes b = w.to_bytes();
  EXPECT_EQ(b.size(), 32u);  // 24-byte header padded to 32
  Parsed p = parse(b);
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_TRUE((*p.file)->metadata().empty());
  EXPECT_TRUE((*p.file)->tensors().empty());
  EXPECT_EQ((*p.file)->data_offset(), 32u);
}

TEST(GgufWriterTest, AddValueReplacesAnExistingKey) {
  GgufWriter w;
  w.add_u32("k.one", 1);
  w.add_string("k.two", "x");
  w.add_u32("k.one", 2);
  Parsed p = parse(w.to_bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufFile& f = **p.file;
  ASSERT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata()[0].first, "k.one");
  EXPECT_EQ(*f.get_u64("k.one"), 2u);
}

// ---- metadata round trips ----

TEST(GgufWriterTest, RoundTripsEveryScalarType) {
  expect_round_trip({
      {"u8.min", unsigned_value(GgufType::U8, 0)},
      {"u8.max", unsigned_value(GgufType::U8, UINT8_MAX)},
      {"i8.min", signed_value(GgufType::I8, INT8_MIN)},
      {"i8.max", signed_value(GgufType::I8, INT8_MAX)},
      {"u16.max", unsigned_value(GgufType::U16, UINT16_MAX)},
      {"i16.min", signed_value(GgufType::I16, INT16_MIN)},
      {"i16.max", signed_value(GgufType::I16, INT16_MAX)},
      {"u32.max", unsigned_value(GgufType::U32, UINT32_MAX)},
      {"i32.min", signed_value(GgufType::I32, INT32_MIN)},
      {"i32.max", signed_value(GgufType::I32, INT32_MAX)},
      {"u64.max", unsigned_value(GgufType::U64, UINT64_MAX)},
      {"u64.big", unsigned_value(GgufType::U64, 0x8000000000000001u)},
      {"i64.min", signed_value(GgufType::I64, INT64_MIN)},
      {"i64.max", signed_value(GgufType::I64, INT64_MAX)},
      {"f32.one_half", float_value(GgufType::F32, 1.5)},
      {"f32.neg_zero", float_value(GgufType::F32, -0.0)},
      {"f32.denorm", float_value(GgufType::F32, std::numeric_limits<float>::denorm_min())},
      {"f32.max", float_value(GgufType::F32, std::numeric_limits<float>::max())},
      {"f32.eps", float_value(GgufType::F32, static_cast<double>(1e-5f))},
      {"f32.inf", float_value(GgufType::F32, -std::numeric_limits<double>::infinity())},
      {"f64.tenth", float_value(GgufType::F64, 0.1)},
      {"f64.min", float_value(GgufType::F64, std::numeric_limits<double>::min())},
      {"f64.denorm", float_value(GgufType::F64, std::numeric_limits<double>::denorm_min())},
      {"f64.max", float_value(GgufType::F64, std::numeric_limits<double>::max())},
      {"bool.true", unsigned_value(GgufType::BOOL, 1)},
      {"bool.false", unsigned_value(GgufType::BOOL, 0)},
      {"str.empty", string_value("")},
      {"str.ascii", string_value("llama")},
      {"str.nul", string_value(std::string("a\0b", 3))},
      {"str.utf8", string_value("\xe2\x96\x81hello \xf0\x9f\xa6\x99")},
      {"str.long", string_value(std::string(70000, 'z'))},
  });
}

TEST(GgufWriterTest, RoundTripsNaN) {
  GgufWriter w;
  w.add_value("f32.nan", float_value(GgufType::F32, std::numeric_limits<double>::quiet_NaN()));
  w.add_value("f64.nan", float_value(GgufType::F64, std::numeric_limits<double>::quiet_NaN()));
  Parsed p = parse(w.to_bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  EXPECT_TRUE(std::isnan(*(*p.file)->get_f64("f32.nan")));
  EXPECT_TRUE(std::isnan(*(*p.file)->get_f64("f64.nan")));
}

TEST(GgufWriterTest, RoundTripsArraysOfEveryScalarType) {
  expect_round_trip({
      {"a.u8", scalar_array<uint8_t>(GgufType::U8, {0, 1, 127, 128, 255})},
      {"a.i8", scalar_array<int8_t>(GgufType::I8, {INT8_MIN, -1, 0, INT8_MAX})},
      {"a.u16", scalar_array<uint16_t>(GgufType::U16, {0, 0x1234, UINT16_MAX})},
      {"a.i16", scalar_array<int16_t>(GgufType::I16, {INT16_MIN, -7, INT16_MAX})},
      {"a.u32", scalar_array<uint32_t>(GgufType::U32, {0, 0xdeadbeef, UINT32_MAX})},
      {"a.i32", scalar_array<int32_t>(GgufType::I32, {INT32_MIN, -1, 0, INT32_MAX})},
      {"a.u64", scalar_array<uint64_t>(GgufType::U64, {0, uint64_t{1} << 63, UINT64_MAX})},
      {"a.i64", scalar_array<int64_t>(GgufType::I64, {INT64_MIN, -3, INT64_MAX})},
      {"a.f32", scalar_array<float>(GgufType::F32, {-0.0f, 1.5f, 1e-5f, std::numeric_limits<float>::infinity()})},
      {"a.f64", scalar_array<double>(GgufType::F64, {0.1, -1e300, std::numeric_limits<double>::denorm_min()})},
      {"a.bool", scalar_array<uint8_t>(GgufType::BOOL, {1, 0, 0, 1})},
      {"a.empty_u8", scalar_array<uint8_t>(GgufType::U8, {})},
      {"a.empty_f64", scalar_array<double>(GgufType::F64, {})},
      {"a.empty_str", string_array({})},
      {"a.empty_arr", array_of_arrays({})},
  });
}

TEST(GgufWriterTest, ArrayElementAccessorsReadTheRawBytes) {
  GgufWriter w;
  w.add_value("a.i8", scalar_array<int8_t>(GgufType::I8, {-128, 5}));
  w.add_value("a.u64", scalar_array<uint64_t>(GgufType::U64, {uint64_t{1} << 40}));
  w.add_f32_array("a.f32", {0.25f, -3.0f});
  w.add_i32_array("a.i32", {INT32_MIN, 9});
  Parsed p = parse(w.to_bytes());
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufFile& f = **p.file;
  EXPECT_EQ(f.find("a.i8")->array_i64(0), -128);
  EXPECT_EQ(f.find("a.i8")->array_f64(1), 5.0);
  EXPECT_EQ(f.find("a.u64")->array_i64(0), int64_t{1} << 40);
  EXPECT_EQ(f.find("a.f32")->array_f64(0), 0.25);
  EXPECT_EQ(f.find("a.f32")->array_f64(1), -3.0);
  EXPECT_EQ(f.find("a.i32")->array_i64(0), INT32_MIN);
  EXPECT_EQ(f.find("a.i32")->n_elems, 2u);
}

TEST(GgufWriterTest, RoundTripsArrayOfStrings) {
  std::vector<std::string> toks = {"", "<s>", std::string("nul\0inside", 10), "\xe2\x96\x81the", std::string(5000, 'q')};
  for (int k = 0; k < 300; ++k) toks.push_back("tok" + std::to_string(k));
  expect_round_trip({{"tokenizer.ggml.tokens", string_array(toks)}});
  GgufWriter w;
  w.add_string_array("t", toks);
  Parsed p = parse(w.to_bytes());
  ASSERT_TRUE(p.file.is_ok());
  auto a = (*p.file)->get_array("t", GgufType::STRING);
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ((*a)->strs, toks);
}

TEST(GgufWriterTest, RoundTripsNestedArrays) {
  const GgufValue inner_u8 = scalar_array<uint8_t>(GgufType::U8, {1, 2, 3});
  const GgufValue inner_empty_i32 = scalar_array<int32_t>(GgufType::I32, {});
  const GgufValue inner_strs = string_array({"p", "", "q"});
  const GgufValue inner_f64 = scalar_array<double>(GgufType::F64, {2.5});
  const GgufValue deeper = array_of_arrays({inner_f64, array_of_arrays({inner_u8})});
  expect_round_trip({
      {"n.mixed", array_of_arrays({inner_u8, inner_empty_i32, inner_strs, deeper})},
      {"n.after", unsigned_value(GgufType::U32, 77)},  // the reader resumes at the right byte
  });
}

// ---- tensor directory ----

struct TensorSpec {
  std::string name;
  DType type;
  std::vector<uint64_t> dims;
  uint8_t seed;
};

const std::vector<TensorSpec>& tensor_specs() {
  static const std::vector<TensorSpec> specs = {
      {"token_embd.weight", DType::F32, {16, 5}, 1},
      {"blk.0.attn_q.weight", DType::F16, {8, 3}, 2},
      {"blk.0.attn_k.weight", DType::BF16, {6}, 3},
      {"blk.0.ffn_up.weight", DType::Q8_0, {64, 3}, 4},
      {"blk.0.ffn_down.weight", DType::Q4_0, {32, 2, 3}, 5},
      {"blk.0.4d", DType::F32, {2, 3, 1, 2}, 6},
      {"output_norm.weight", DType::F32, {1}, 7},
  };
  return specs;
}

uint64_t spec_bytes(const TensorSpec& s) {
  uint64_t rows = 1;
  for (size_t d = 1; d < s.dims.size(); ++d) rows *= s.dims[d];
  return dtype_row_bytes(s.type, s.dims[0]) * rows;
}

void check_directory(const Bytes& bytes, uint32_t alignment) {
  Parsed p = parse(bytes);
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  const GgufFile& f = **p.file;
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.data_offset() % alignment, 0u);
  if (alignment != kGgufDefaultAlignment) {
    EXPECT_EQ(*f.get_u64("general.alignment"), alignment);
  }
  const auto& specs = tensor_specs();
  ASSERT_EQ(f.tensors().size(), specs.size());
  uint64_t expect_offset = 0;
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& s = specs[k];
    const GgufTensorInfo& t = f.tensors()[k];
    SCOPED_TRACE(s.name);
    EXPECT_EQ(t.name, s.name);
    EXPECT_EQ(f.find_tensor(s.name), &t);
    EXPECT_EQ(t.type, s.type);
    ASSERT_EQ(t.n_dims, s.dims.size());
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < kGgufMaxDims; ++d) {
      EXPECT_EQ(t.ne[d], d < s.dims.size() ? s.dims[d] : 1u) << "dim " << d;
      n_elems *= t.ne[d];
    }
    EXPECT_EQ(t.n_elems(), n_elems);
    EXPECT_EQ(t.n_bytes, spec_bytes(s));
    EXPECT_EQ(t.row_bytes(), dtype_row_bytes(s.type, s.dims[0]));
    EXPECT_EQ(t.n_rows() * t.row_bytes(), t.n_bytes);
    // Packed in order, each at the next multiple of the alignment.
    expect_offset = (expect_offset + alignment - 1) / alignment * alignment;
    EXPECT_EQ(t.offset, expect_offset);
    EXPECT_EQ(t.offset % alignment, 0u);
    expect_offset += t.n_bytes;
    EXPECT_EQ(t.data, p.buf.get() + f.data_offset() + t.offset);
    EXPECT_EQ(Bytes(t.data, t.data + t.n_bytes), pattern(s.seed, t.n_bytes));
  }
  EXPECT_EQ(f.data_offset() + expect_offset, bytes.size());
}

TEST(GgufWriterTest, RoundTripsTheTensorDirectory) {
  GgufWriter w;
  for (const auto& s : tensor_specs()) w.add_tensor(s.name, s.type, s.dims, fill_pattern(s.seed));
  check_directory(w.to_bytes(), kGgufDefaultAlignment);
}

TEST(GgufWriterTest, CustomAlignmentSetBeforeTensors) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.set_alignment(64);
  for (const auto& s : tensor_specs()) w.add_tensor(s.name, s.type, s.dims, fill_pattern(s.seed));
  check_directory(w.to_bytes(), 64);
}

TEST(GgufWriterTest, CustomAlignmentSetAfterTensorsReplacesOffsets) {
  GgufWriter w;
  for (const auto& s : tensor_specs()) w.add_tensor(s.name, s.type, s.dims, fill_pattern(s.seed));
  w.set_alignment(64);
  check_directory(w.to_bytes(), 64);
  w.set_alignment(128);
  check_directory(w.to_bytes(), 128);
  Parsed p = parse(w.to_bytes());
  ASSERT_TRUE(p.file.is_ok());
  EXPECT_EQ((*p.file)->metadata().size(), 1u);  // general.alignment written once
}

TEST(GgufWriterTest, QuantizedTensorsDequantizeFromTheMapping) {
  std::vector<float> src(64 * 2);
  for (size_t k = 0; k < src.size(); ++k) src[k] = std::sin(0.37f * static_cast<float>(k)) * 3.0f;
  GgufWriter w;
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::F16, DType::BF16, DType::F32}) {
    w.add_tensor(std::string("w.") + dtype_name(t), t, {64, 2}, [t, &src](uint8_t* dst, uint64_t n) {
      ASSERT_EQ(n, dtype_row_bytes(t, 64) * 2);
      quantize_row_ref(t, src.data(), dst, 64);
      quantize_row_ref(t, src.data() + 64, dst + dtype_row_bytes(t, 64), 64);
    });
  }
  const Bytes bytes = w.to_bytes();
  Parsed p = parse(bytes);
  ASSERT_TRUE(p.file.is_ok()) << p.file.status().to_string();
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::F16, DType::BF16, DType::F32}) {
    const GgufTensorInfo* ti = (*p.file)->find_tensor(std::string("w.") + dtype_name(t));
    ASSERT_NE(ti, nullptr);
    Bytes want(ti->n_bytes);
    quantize_row_ref(t, src.data(), want.data(), 64);
    quantize_row_ref(t, src.data() + 64, want.data() + ti->row_bytes(), 64);
    EXPECT_EQ(Bytes(ti->data, ti->data + ti->n_bytes), want) << dtype_name(t);
    std::vector<float> back(64);
    dequantize_row_ref(t, ti->data + ti->row_bytes(), back.data(), 64);
    const float tol = t == DType::Q4_0 ? 0.5f : t == DType::Q8_0 ? 0.05f : t == DType::F32 ? 0.0f : 0.02f;
    for (size_t k = 0; k < 64; ++k) EXPECT_NEAR(back[k], src[64 + k], tol) << dtype_name(t) << " elem " << k;
  }
}

TEST(GgufWriterTest, HeaderBytesIsThePaddedPrefixOfToBytes) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.set_alignment(64);
  for (const auto& s : tensor_specs()) w.add_tensor(s.name, s.type, s.dims, fill_pattern(s.seed));
  const Bytes header = w.header_bytes();
  const Bytes all = w.to_bytes();
  EXPECT_EQ(header.size() % 64, 0u);
  ASSERT_LE(header.size(), all.size());
  EXPECT_TRUE(std::equal(header.begin(), header.end(), all.begin()));
  Parsed p = parse(all);
  ASSERT_TRUE(p.file.is_ok());
  EXPECT_EQ((*p.file)->data_offset(), header.size());
}

// ---- write_file ----

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = fs::temp_directory_path() /
            ("kvstash_gguf_writer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + std::to_string(now));
    created_ = fs::create_directory(path_);
  }
  ~TempDir() {
    std::error_code ec;
    if (created_) fs::remove_all(path_, ec);
  }
  bool ok() const { return created_; }
  fs::path path(const std::string& name) const { return path_ / name; }
  const fs::path& root() const { return path_; }

 private:
  fs::path path_;
  bool created_ = false;
};

Bytes read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(GgufWriterTest, WriteFileMatchesToBytesAndOpens) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w.set_alignment(64);
  for (const auto& s : tensor_specs()) w.add_tensor(s.name, s.type, s.dims, fill_pattern(s.seed));
  const fs::path path = dir.path("model.gguf");
  ASSERT_TRUE(w.write_file(path.string()).is_ok());
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  const Bytes on_disk = read_all(path);
  EXPECT_EQ(on_disk, w.to_bytes());
  auto r = GgufFile::open(path.string());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ((*r)->tensors().size(), tensor_specs().size());
  EXPECT_EQ((*r)->alignment(), 64u);
  check_directory(on_disk, 64);
}

TEST(GgufWriterTest, WriteFileIntoAMissingDirectoryFails) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  GgufWriter w;
  w.add_u32("a.b", 1);
  const fs::path path = dir.root() / "no" / "such" / "model.gguf";
  Status st = w.write_file(path.string());
  EXPECT_EQ(st.code(), StatusCode::IO) << st.to_string();
  EXPECT_NE(st.message().find("model.gguf"), std::string::npos) << st.message();
  EXPECT_FALSE(fs::exists(path));
}

}  // namespace
}  // namespace kvstash
