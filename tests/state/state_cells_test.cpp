// The cells section of format 1.1 (docs/state-format.md §2.1, §4.4, §7), on caches filled by hand
// (no model runs): CEL2 round trips for one sequence and whole contexts with several runs; 1.0
// files (CELL) still restore bit for bit; every CEL2 rule is refused with its own message and
// leaves the cache as it was; and the file of a TinyLlama-shaped cache is cache bytes + at most
// 0.1 % + 4 KiB for every cache type, with the exact size §7 gives.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/le.h"
#include "kv/kv_cache.h"
#include "state/state.h"
#include "state/state_format.h"
#include "alloc_counter.h"
#include "state_fixtures.h"

namespace kvstash {
namespace {

using test::Snapshot;
using test::snapshot;
using test::unchanged;

constexpr uint32_t kVocab = 1000;

const ModelFingerprint& fingerprint() {
  static const ModelFingerprint fp = {"llama", "cells-test", 31, 32, 33, 34, kVocab};
  return fp;
}

// 3 layers x (K f16 [2 x 32], V q8_0 [64]), every row of every cell a distinct pattern.
std::unique_ptr<KvCache> small_cache(uint32_t n_cells = 128) {
  std::vector<std::vector<KvLayout::StreamRequest>> req(3);
  for (auto& l : req) {
    l.push_back({KvStream::K, DType::F16, 64, 2});
    l.push_back({KvStream::V, DType::Q8_0, 64, 1});
  }
  KvLayout L;
  EXPECT_EQ(KvLayout::make(n_cells, req, &L), "");
  auto c = std::make_unique<KvCache>(L);
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < 2; ++si) {
      uint8_t* p = c->row(il, si, 0);
      for (size_t i = 0; i < L.layer(il).streams[si].row_bytes * L.n_cells(); ++i) p[i] = static_cast<uint8_t>((i * 2654435761u + il * 13u + si) >> 7);
    }
  return c;
}

std::vector<uint8_t> rows_of(const KvCache& c, uint32_t cell) {
  std::vector<uint8_t> out;
  const KvLayout& L = c.layout();
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
      const uint8_t* r = c.row(il, si, cell);
      out.insert(out.end(), r, r + L.layer(il).streams[si].row_bytes);
    }
  return out;
}

// Cache contents by (sequence set, position, token, rows), independent of cell indices.
using Canon = std::vector<std::tuple<uint64_t, int32_t, int32_t, std::vector<uint8_t>>>;
Canon canon(const KvCache& c, uint64_t only_set = 0) {
  Canon k;
  for (uint32_t i = 0; i < c.n_cells(); ++i)
    if (!c.cell_empty(i) && (only_set == 0 || c.cell_seqs(i) == only_set)) k.emplace_back(only_set ? 0 : c.cell_seqs(i), c.cell_pos(i), c.cell_token(i), rows_of(c, i));
  std::sort(k.begin(), k.end());
  return k;
}

// Sequence seq's cells by (position, token, rows), whoever else shares them.
Canon seq_canon(const KvCache& c, SeqId seq) {
  Canon k;
  std::vector<uint32_t> cells;
  c.seq_cells_sorted(seq, &cells);
  for (uint32_t x : cells) k.emplace_back(0, c.cell_pos(x), c.cell_token(x), rows_of(c, x));
  std::sort(k.begin(), k.end());
  return k;
}

std::vector<uint8_t> write(const KvCache& c, SeqId seq, uint16_t minor = 1) {
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  StateSaveOptions o;
  o.created_ms = 1700000000000ull;
  o.format_minor = minor;
  auto r = seq >= 0 ? state_write_seq(c, seq, fingerprint(), o, sink) : state_write_all(c, fingerprint(), o, sink);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  if (r.is_ok()) {
    EXPECT_EQ(r->n_bytes, out.size());
  }
  return out;
}

Result<StateInfo> inspect(const std::vector<uint8_t>& b) {
  MemSource src(b.data(), b.size());
  return state_inspect(src);
}

// Sequence 5: positions 0..9 (cells 10..19), 20..30 (cells 40..50, then cell 70: position 30
// follows 29, so it stays in the run although its cell does not), 35..39 (cells 80..84).
// Sequence 6 shares cells 10..12 (the kind-1 file still records set 1) and holds 100..103.
void fill_seq5(KvCache& c) {
  for (uint32_t k = 0; k < 10; ++k) c.cell_assign(10 + k, static_cast<int32_t>(k), 5, static_cast<int32_t>(k * 3));
  for (uint32_t k = 0; k < 10; ++k) c.cell_assign(40 + k, static_cast<int32_t>(20 + k), 5, static_cast<int32_t>(500 + k));
  c.cell_assign(70, 30, 5, -1);
  for (uint32_t k = 0; k < 5; ++k) c.cell_assign(80 + k, static_cast<int32_t>(35 + k), 5, static_cast<int32_t>(kVocab - 1 - k));
  for (uint32_t k = 0; k < 3; ++k) c.cell_assign_seqs(10 + k, static_cast<int32_t>(k), (uint64_t(1) << 5) | (uint64_t(1) << 6), static_cast<int32_t>(k * 3));
  for (uint32_t k = 0; k < 4; ++k) c.cell_assign(90 + k, static_cast<int32_t>(100 + k), 6, 7);
}
constexpr uint32_t kSeq5Cells = 26;
const std::vector<int32_t>& seq5_positions() {
  static const std::vector<int32_t> p = [] {
    std::vector<int32_t> v;
    for (int32_t x = 0; x < 10; ++x) v.push_back(x);
    for (int32_t x = 20; x <= 30; ++x) v.push_back(x);
    for (int32_t x = 35; x < 40; ++x) v.push_back(x);
    return v;
  }();
  return p;
}

// A whole context with six runs in cell order: seq 0 at 0..7 (cells 0..7), seq 1 at 0..4
// (cells 8..12), seqs {0, 1} at 8..10 (cells 13..15), seq 3 at 100..105 (cells 20..23 and
// 25..26, cell 24 empty), seq 4 at 7 then 6 (cells 30, 31: positions going down).
void fill_context(KvCache& c) {
  for (uint32_t k = 0; k < 8; ++k) c.cell_assign(k, static_cast<int32_t>(k), 0, static_cast<int32_t>(k));
  for (uint32_t k = 0; k < 5; ++k) c.cell_assign(8 + k, static_cast<int32_t>(k), 1, static_cast<int32_t>(100 + k));
  for (uint32_t k = 0; k < 3; ++k) c.cell_assign_seqs(13 + k, static_cast<int32_t>(8 + k), 0b11, static_cast<int32_t>(200 + k));
  for (uint32_t k = 0; k < 4; ++k) c.cell_assign(20 + k, static_cast<int32_t>(100 + k), 3, -1);
  for (uint32_t k = 0; k < 2; ++k) c.cell_assign(25 + k, static_cast<int32_t>(104 + k), 3, 300);
  c.cell_assign(30, 7, 4, 1);
  c.cell_assign(31, 6, 4, 2);
}
constexpr uint32_t kContextCells = 8 + 5 + 3 + 6 + 2;

// ---- raw file surgery (trusted parse of files this test wrote) ----

struct Sec {
  size_t frame, len;
  size_t end() const { return frame + 16 + len + 8; }
};

std::vector<Sec> sections(const std::vector<uint8_t>& b) {
  std::vector<Sec> out;
  for (size_t p = load_le<uint32_t>(b.data() + 16); p < b.size(); p = out.back().end())
    out.push_back({p, static_cast<size_t>(load_le<uint64_t>(b.data() + p + 8))});
  return out;
}

void fix_header(std::vector<uint8_t>& b) {
  store_le<uint64_t>(b.data() + 24, b.size());
  store_le<uint64_t>(b.data() + 56, 0);
  store_le<uint64_t>(b.data() + 56, XXH3_64bits(b.data(), load_le<uint32_t>(b.data() + 16)));
}

std::vector<uint8_t> frame(const char* tag, uint32_t flags, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> s(16 + payload.size() + 8);
  std::memcpy(s.data(), tag, 4);
  store_le<uint32_t>(s.data() + 4, flags);
  store_le<uint64_t>(s.data() + 8, payload.size());
  if (!payload.empty()) std::memcpy(s.data() + 16, payload.data(), payload.size());
  store_le<uint64_t>(s.data() + 16 + payload.size(), XXH3_64bits(payload.data(), payload.size()));
  return s;
}

// `b` with section i replaced by `repl` (any number of whole sections), header fixed (count, size, checksum).
std::vector<uint8_t> replace_section(const std::vector<uint8_t>& b, size_t i, const std::vector<uint8_t>& repl, int n_sections_delta = 0) {
  const Sec s = sections(b)[i];
  std::vector<uint8_t> out(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(s.frame));
  out.insert(out.end(), repl.begin(), repl.end());
  out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(s.end()), b.end());
  store_le<uint32_t>(out.data() + 32, static_cast<uint32_t>(int64_t(load_le<uint32_t>(out.data() + 32)) + n_sections_delta));
  fix_header(out);
  return out;
}

constexpr size_t kCellsSection = 3;  // META MODL LAYT, then the cells (§1)

struct RunSpec {
  int32_t first;
  uint32_t n;
  uint64_t seqs;
};

// A CEL2 payload: counts, runs, tokens (n_runs as given, or the number of runs).
std::vector<uint8_t> cel2(uint32_t n_cells, const std::vector<RunSpec>& runs, const std::vector<int32_t>& tokens, int64_t n_runs = -1) {
  std::vector<uint8_t> p(8 + 16 * runs.size() + 4 * tokens.size());
  store_le<uint32_t>(p.data(), n_cells);
  store_le<uint32_t>(p.data() + 4, n_runs < 0 ? static_cast<uint32_t>(runs.size()) : static_cast<uint32_t>(n_runs));
  for (size_t j = 0; j < runs.size(); ++j) {
    store_le<int32_t>(p.data() + 8 + 16 * j, runs[j].first);
    store_le<uint32_t>(p.data() + 12 + 16 * j, runs[j].n);
    store_le<uint64_t>(p.data() + 16 + 16 * j, runs[j].seqs);
  }
  for (size_t k = 0; k < tokens.size(); ++k) store_le<int32_t>(p.data() + 8 + 16 * runs.size() + 4 * k, tokens[k]);
  return p;
}

std::vector<int32_t> tokens_of(const StateInfo& in) { return in.cell_token; }

// ======================================================================= round trips

TEST(StateCells, OneSequenceWithGapsRoundTripsAsThreeRuns) {
  auto src = small_cache();
  fill_seq5(*src);
  const std::vector<uint8_t> file = write(*src, 5);
  EXPECT_EQ(load_le<uint16_t>(file.data() + 10), 1);  // minor 1 (§2.1)
  auto info = inspect(file);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->minor, 1);
  EXPECT_EQ(info->cells_tag, "CEL2");
  EXPECT_EQ(info->n_cell_runs, 3u);
  EXPECT_EQ(info->cell_pos, seq5_positions());
  EXPECT_EQ(info->cell_seqs, std::vector<uint64_t>(kSeq5Cells, 1));
  // §4.4.2: 8 + 16 x 3 runs + 4 x 26 tokens.
  EXPECT_EQ(sections(file)[kCellsSection].len, 8u + 16u * 3 + 4u * kSeq5Cells);

  // Into sequence 2 of a cache that holds other cells where the source had them.
  auto dst = small_cache();
  for (uint32_t k = 0; k < 40; ++k) dst->cell_assign(k, static_cast<int32_t>(k), 1, 9);
  dst->cell_assign(60, 0, 2, 9);
  const Canon others = canon(*dst, uint64_t(1) << 1);
  MemSource ms(file.data(), file.size());
  auto r = state_read_seq(*dst, 2, fingerprint(), ms, {});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_tokens, kSeq5Cells);
  EXPECT_EQ(r->positions, seq5_positions());
  EXPECT_EQ(r->tokens, tokens_of(*info));
  // Rows, positions and tokens equal the source's sequence 5, bit for bit; sequence 1 untouched.
  EXPECT_EQ(canon(*dst, uint64_t(1) << 2), seq_canon(*src, 5));
  EXPECT_EQ(canon(*dst, uint64_t(1) << 1), others);
  EXPECT_EQ(dst->seq_n_cells(2), kSeq5Cells);
}

TEST(StateCells, WholeContextWithSharedCellsRoundTripsAsSixRuns) {
  auto src = small_cache();
  fill_context(*src);
  const std::vector<uint8_t> file = write(*src, -1);
  auto info = inspect(file);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->cells_tag, "CEL2");
  EXPECT_EQ(info->n_cell_runs, 6u);
  EXPECT_EQ(sections(file)[kCellsSection].len, 8u + 16u * 6 + 4u * kContextCells);
  const std::vector<uint64_t> want_sets = {1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 8, 8, 8, 8, 8, 8, 16, 16};
  EXPECT_EQ(info->cell_seqs, want_sets);
  const std::vector<int32_t> want_pos = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 8, 9, 10, 100, 101, 102, 103, 104, 105, 7, 6};
  EXPECT_EQ(info->cell_pos, want_pos);

  auto dst = small_cache();
  for (uint32_t k = 0; k < 50; ++k) dst->cell_assign(k + 3, static_cast<int32_t>(k), 9, 1);  // replaced by the restore
  MemSource ms(file.data(), file.size());
  auto r = state_read_all(*dst, fingerprint(), ms, {});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_tokens, kContextCells);
  EXPECT_EQ(canon(*dst), canon(*src));
  EXPECT_EQ(dst->n_used(), kContextCells);
}

TEST(StateCells, AVersion10FileStillRestoresBitForBit) {
  for (SeqId seq : {5, -1}) {
    auto src = small_cache();
    if (seq >= 0) fill_seq5(*src);
    else fill_context(*src);
    const std::vector<uint8_t> v10 = write(*src, seq, 0), v11 = write(*src, seq, 1);
    const uint32_t n = seq >= 0 ? kSeq5Cells : kContextCells;
    EXPECT_EQ(load_le<uint16_t>(v10.data() + 10), 0);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(v10.data() + sections(v10)[kCellsSection].frame), 4), "CELL");
    // §7: only the cells section differs, 4 + 16 n against 8 + 16 runs + 4 n.
    auto i10 = inspect(v10), i11 = inspect(v11);
    ASSERT_TRUE(i10.is_ok()) << i10.status().to_string();
    ASSERT_TRUE(i11.is_ok()) << i11.status().to_string();
    EXPECT_EQ(i10->minor, 0);
    EXPECT_EQ(i10->cells_tag, "CELL");
    EXPECT_EQ(i10->n_cell_runs, 0u);
    EXPECT_EQ(int64_t(v10.size()) - int64_t(v11.size()), int64_t(4 + 16 * n) - int64_t(8 + 16 * i11->n_cell_runs + 4 * n));
    EXPECT_EQ(i10->cell_pos, i11->cell_pos);
    EXPECT_EQ(i10->cell_token, i11->cell_token);
    EXPECT_EQ(i10->cell_seqs, i11->cell_seqs);
    auto a = small_cache(), b = small_cache();
    MemSource s10(v10.data(), v10.size()), s11(v11.data(), v11.size());
    auto ra = seq >= 0 ? state_read_seq(*a, 5, fingerprint(), s10, {}) : state_read_all(*a, fingerprint(), s10, {});
    auto rb = seq >= 0 ? state_read_seq(*b, 5, fingerprint(), s11, {}) : state_read_all(*b, fingerprint(), s11, {});
    ASSERT_TRUE(ra.is_ok()) << ra.status().to_string();
    ASSERT_TRUE(rb.is_ok()) << rb.status().to_string();
    if (seq >= 0) {
      EXPECT_EQ(seq_canon(*a, 5), seq_canon(*src, 5));
    } else {
      EXPECT_EQ(canon(*a), canon(*src));
    }
    EXPECT_EQ(canon(*a), canon(*b));
    // And a 1.0 file written again is 1.1 with the same contents (what `state convert` does).
    EXPECT_EQ(write(*a, seq, 1), v11);
  }
  // The writer refuses minors it does not know.
  auto c = small_cache();
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  StateSaveOptions o;
  o.format_minor = 2;
  auto r = state_write_seq(*c, 0, fingerprint(), o, sink);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::InvalidArgument);
  EXPECT_NE(r.status().message().find("1.2"), std::string::npos) << r.status().message();
}

// ======================================================================= corruption

bool has(const std::string& s, const std::string& w) { return s.find(w) != std::string::npos; }

// A restore target holding other sequences; every refused file must leave it as it was.
class StateCellsCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    auto src = small_cache();
    fill_seq5(*src);
    seq_file_ = write(*src, 5);
    auto ctx = small_cache();
    fill_context(*ctx);
    ctx_file_ = write(*ctx, -1);
    dst_ = small_cache();
    for (uint32_t k = 0; k < 30; ++k) dst_->cell_assign(k, static_cast<int32_t>(k), 2, 11);
    for (uint32_t k = 0; k < 6; ++k) dst_->cell_assign(50 + k, static_cast<int32_t>(k), 3, 12);
    before_ = snapshot(*dst_);
  }

  // The file must be refused by inspect, by a restore into sequence 2 (kind 1) or of the whole
  // context (kind 2), with `code` and a message holding `want`, and change nothing. Errors in
  // the cells section come before the file's kind is compared with the call's; for errors found
  // after it, `want_other_kind` is what the restore of the other kind reports.
  void expect_refused(const std::vector<uint8_t>& b, const std::string& want, StatusCode code = StatusCode::Corruption,
                      const std::string& want_other_kind = "") {
    auto info = inspect(b);
    ASSERT_FALSE(info.is_ok()) << want << ": inspect accepted it";
    EXPECT_EQ(info.status().code(), code) << info.status().to_string();
    EXPECT_TRUE(has(info.status().message(), want)) << "want '" << want << "' in: " << info.status().message();
    for (bool whole : {false, true}) {
      MemSource ms(b.data(), b.size());
      auto r = whole ? state_read_all(*dst_, fingerprint(), ms, {}) : state_read_seq(*dst_, 2, fingerprint(), ms, {});
      ASSERT_FALSE(r.is_ok()) << want << ": restore accepted it";
      const bool other_kind = whole == (load_le<uint32_t>(b.data() + 20) == 1) && !want_other_kind.empty();
      EXPECT_EQ(r.status().code(), other_kind ? StatusCode::InvalidArgument : code) << r.status().to_string();
      EXPECT_TRUE(has(r.status().message(), other_kind ? want_other_kind : want)) << "want '" << want << "' in: " << r.status().message();
      EXPECT_TRUE(unchanged(*dst_, before_)) << want << ": the cache changed";
    }
  }

  std::vector<uint8_t> with_cells(const std::vector<uint8_t>& file, const std::vector<uint8_t>& payload, const char* tag = "CEL2",
                                  uint32_t flags = statefmt::kFlagRequired) {
    return replace_section(file, kCellsSection, frame(tag, flags, payload));
  }

  std::vector<int32_t> seq_tokens() const { return inspect(seq_file_)->cell_token; }

  std::vector<uint8_t> seq_file_, ctx_file_;
  std::unique_ptr<KvCache> dst_;
  Snapshot before_;
};

TEST_F(StateCellsCorruption, TheSurgeryItselfKeepsAGoodFileGood) {
  // The hand-built payload of the runs the writer made: the file is byte for byte the same.
  const std::vector<RunSpec> runs = {{0, 10, 1}, {20, 11, 1}, {35, 5, 1}};
  EXPECT_EQ(with_cells(seq_file_, cel2(kSeq5Cells, runs, seq_tokens())), seq_file_);
  // The same cells split into more runs are as good (§4.4.2: any split that keeps the rules).
  const std::vector<uint8_t> split = with_cells(seq_file_, cel2(kSeq5Cells, {{0, 4, 1}, {4, 6, 1}, {20, 11, 1}, {35, 1, 1}, {36, 4, 1}}, seq_tokens()));
  auto info = inspect(split);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->n_cell_runs, 5u);
  EXPECT_EQ(info->cell_pos, seq5_positions());
  MemSource ms(split.data(), split.size());
  ASSERT_TRUE(state_read_seq(*dst_, 7, fingerprint(), ms, {}).is_ok());
  EXPECT_EQ(dst_->seq_n_cells(7), kSeq5Cells);
}

TEST_F(StateCellsCorruption, EveryRunRuleHasItsError) {
  const std::vector<int32_t> t = seq_tokens();
  const uint32_t n = kSeq5Cells;
  struct Case {
    std::vector<uint8_t> payload;
    std::string want;
  };
  std::vector<int32_t> bad_tok = t, neg_tok = t;
  bad_tok[7] = static_cast<int32_t>(kVocab);
  neg_tok[25] = -2;
  std::vector<RunSpec> ones(n + 1, {0, 1, 1});
  for (uint32_t j = 0; j < ones.size(); ++j) ones[j].first = static_cast<int32_t>(j);
  std::vector<uint8_t> longer = cel2(n, {{0, 10, 1}, {20, 11, 1}, {35, 5, 1}}, t);
  longer.insert(longer.end(), 4, 0);
  const Case cases[] = {
      {cel2(n, {{0, 10, 1}, {20, 0, 1}, {20, 11, 1}, {35, 5, 1}}, t), "CEL2 run 1 has count 0"},
      {cel2(n, {{-1, 10, 1}, {20, 11, 1}, {35, 5, 1}}, t), "CEL2 run 0 starts at negative position -1"},
      {cel2(n, {{0, 10, 1}, {20, 11, 1}, {INT32_MAX - 3, 5, 1}}, t), "CEL2 run 2: position 2147483644 + count 5 overflows"},
      {cel2(n, {{0, 10, 1}, {20, 11, 1}, {35, 4, 1}}, t), "CEL2 runs hold 25 cells, n_cells is 26"},
      {cel2(n, {{0, 10, 1}, {20, 11, 1}, {35, 6, 1}}, t), "CEL2 run 2: runs hold more cells than n_cells 26"},
      {cel2(n, ones, t), "CEL2 has 27 runs for 26 cells"},
      {cel2(n, {}, t), "CEL2 has no runs for 26 cells"},
      {cel2(n - 1, {{0, 10, 1}, {20, 11, 1}, {35, 4, 1}}, std::vector<int32_t>(t.begin(), t.end() - 1)), "CEL2 n_cells 25 differs from META n_tokens 26"},
      {longer, "CEL2 section is 164 bytes, 3 runs and 26 cells need 160"},
      {std::vector<uint8_t>(longer.begin(), longer.begin() + 6), "CEL2 section is 6 bytes, shorter than its 8-byte counts"},
      {cel2(n, {{0, 10, 1}, {20, 11, 2}, {35, 5, 1}}, t), "cell 10 of a sequence file has sequence set 2, expected 1"},
      {cel2(n, {{0, 10, 1}, {5, 11, 1}, {35, 5, 1}}, t), "cell 10: positions are not strictly increasing (9 then 5)"},
      {cel2(n, {{0, 10, 1}, {20, 11, 1}, {35, 5, 1}}, bad_tok), "cell 7 has token 1000, vocabulary has 1000"},
      {cel2(n, {{0, 10, 1}, {20, 11, 1}, {35, 5, 1}}, neg_tok), "cell 25 has token -2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.want);
    expect_refused(with_cells(seq_file_, c.payload), c.want);
    if (HasFatalFailure()) return;
  }
}

TEST_F(StateCellsCorruption, WholeContextRulesHoldForRuns) {
  const std::vector<int32_t> t(kContextCells, 5);
  expect_refused(with_cells(ctx_file_, cel2(kContextCells, {{0, 24, 0}}, t)), "cell 0 belongs to no sequence");
  expect_refused(with_cells(ctx_file_, cel2(kContextCells, {{0, 12, 1}, {11, 12, 1}}, t)), "sequence 0 holds position 11 twice");
  expect_refused(with_cells(ctx_file_, cel2(kContextCells, {{0, 12, 1}, {0, 12, 2}}, std::vector<int32_t>(kContextCells, int32_t(kVocab)))),
                 "cell 0 has token 1000");
  // The same runs with the positions apart are a good file.
  const std::vector<uint8_t> ok = with_cells(ctx_file_, cel2(kContextCells, {{0, 12, 1}, {12, 12, 1}}, t));
  auto info = inspect(ok);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->n_cell_runs, 2u);
}

TEST_F(StateCellsCorruption, ExactlyOneCellsSectionOfAKnownTag) {
  // CEL2 followed by the same cells as CELL: the second one stands where KVDT must.
  auto src = small_cache();
  fill_seq5(*src);
  const std::vector<uint8_t> v10 = write(*src, 5, 0);
  const Sec c10 = sections(v10)[kCellsSection], c11 = sections(seq_file_)[kCellsSection];
  std::vector<uint8_t> two(seq_file_.begin() + static_cast<std::ptrdiff_t>(c11.frame), seq_file_.begin() + static_cast<std::ptrdiff_t>(c11.end()));
  two.insert(two.end(), v10.begin() + static_cast<std::ptrdiff_t>(c10.frame), v10.begin() + static_cast<std::ptrdiff_t>(c10.end()));
  const std::vector<uint8_t> both = replace_section(seq_file_, kCellsSection, two, +1);
  expect_refused(both, "expected section 'KVDT', found 'CELL'", StatusCode::Corruption, "the file holds one sequence, expected a whole context");
  // No cells section at all: KVDT where the cells belong.
  const std::vector<uint8_t> none = replace_section(seq_file_, kCellsSection, {}, -1);
  expect_refused(none, "expected section 'CEL2' or 'CELL', found 'KVDT'");
  // A cells section marked optional.
  expect_refused(with_cells(seq_file_, cel2(kSeq5Cells, {{0, 10, 1}, {20, 11, 1}, {35, 5, 1}}, seq_tokens()), "CEL2", 0),
                 "section 'CEL2' must be marked required");
  // An unknown required tag there: a newer minor's cells (Unsupported), or corruption in a file
  // that claims this reader's minor.
  std::vector<uint8_t> newer = with_cells(seq_file_, {1, 2, 3}, "CEL3");
  expect_refused(newer, "expected section 'CEL2' or 'CELL', found 'CEL3'");
  store_le<uint16_t>(newer.data() + 10, statefmt::kMinor + 1);
  fix_header(newer);
  expect_refused(newer, "required section 'CEL3' in place of the cells is not understood by this version (file 1.2, this build reads up to 1.1)",
                 StatusCode::Unsupported);
}

// §4.4: a file that claims many cells but carries no rows for them is refused before the cells
// are allocated (docs/reliability.md: no more than a small file's worth).
TEST_F(StateCellsCorruption, ClaimedCellsWithoutRowsAreRefusedBeforeAllocating) {
  constexpr uint32_t kClaim = 1000000;
  std::vector<uint8_t> b = seq_file_;
  const std::vector<Sec> ss = sections(b);
  store_le<uint32_t>(b.data() + ss[0].frame + 16 + 12, kClaim);  // META n_tokens
  store_le<uint64_t>(b.data() + ss[0].frame + 16 + ss[0].len, XXH3_64bits(b.data() + ss[0].frame + 16, ss[0].len));
  size_t o = ss[2].frame + 16 + 4;
  for (uint32_t il = 0; il < 3; ++il, o += 4)
    for (uint32_t si = 0; si < 2; ++si, o += 32) store_le<uint64_t>(b.data() + o + 4 + 24, kClaim);  // LAYT row counts
  store_le<uint64_t>(b.data() + ss[2].frame + 16 + ss[2].len, XXH3_64bits(b.data() + ss[2].frame + 16, ss[2].len));
  b = with_cells(b, cel2(kClaim, {{0, kClaim, 1}}, std::vector<int32_t>(kClaim, 1)));  // 4 MB of well-formed cells
  const int64_t limit = int64_t(b.size()) * 4;
  const int64_t before = test::bytes_allocated();
  auto info = inspect(b);
  const int64_t used = test::bytes_allocated() - before;
  ASSERT_FALSE(info.is_ok());
  EXPECT_TRUE(has(info.status().message(), "1000000 tokens of KV rows do not fit in the")) << info.status().message();
  EXPECT_LT(used, limit) << info.status().to_string();
  EXPECT_LT(used, int64_t(1) << 20) << "the cells were allocated before the check";
  expect_refused(b, "1000000 tokens of KV rows do not fit in the");
}

// ======================================================================= size (§7)

// TinyLlama-1.1B's KvLayout (arch_llama.cpp: K and V rows of n_head_kv x head_dim elements, one
// group per KV head): 22 layers, 4 KV heads x 64.
KvLayout tinyllama_layout(uint32_t n_cells, DType t) {
  std::vector<std::vector<KvLayout::StreamRequest>> req(22);
  for (auto& l : req) {
    l.push_back({KvStream::K, t, 4 * 64, 4});
    l.push_back({KvStream::V, t, 4 * 64, 4});
  }
  KvLayout L;
  EXPECT_EQ(KvLayout::make(n_cells, req, &L), "");
  return L;
}

// §7, part by part, for a one-sequence file of n cells in r runs.
uint64_t formula_bytes(const KvLayout& L, const ModelFingerprint& fp, uint32_t n, uint32_t runs, uint16_t minor) {
  const std::string writer = std::string("kvstash ") + KVSTASH_VERSION + " (" + KVSTASH_COMMIT + ")";
  uint64_t b = 64;
  b += 24 + 26 + writer.size();                      // META
  b += 24 + 40 + fp.arch.size() + fp.name.size();    // MODEL
  b += 24 + 4;                                       // LAYOUT
  for (uint32_t il = 0; il < L.n_layers(); ++il) b += 4 + 32 * L.layer(il).streams.size();
  b += minor == 0 ? 24 + 4 + 16 * uint64_t(n) : 24 + 8 + 16 * uint64_t(runs) + 4 * uint64_t(n);  // cells
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (const KvRowSpec& s : L.layer(il).streams) b += 24 + 8 + s.row_bytes * uint64_t(n);  // KVDATA
  return b + 24;                                                                           // END
}

TEST(StateCellsSize, TinyLlamaFileIsCacheBytesPlusAtMostATenthOfAPercentAnd4KiB) {
  const ModelFingerprint fp = {"llama", "TinyLlama-1.1B-shaped", 1, 2, 3, 4, 32000};
  EXPECT_EQ(tinyllama_layout(1, DType::Q4_0).cell_bytes(), 6336u);  // the q4_0 figure
  for (uint32_t n : {1024u, 4096u})
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV}) {
      const std::string what = std::to_string(n) + " tokens " + dtype_name(t);
      KvCache cache(tinyllama_layout(n, t));
      for (uint32_t c = 0; c < n; ++c) cache.cell_assign(c, static_cast<int32_t>(c), 0, static_cast<int32_t>(c % 32000));
      const uint64_t cache_bytes = uint64_t(cache.layout().cell_bytes()) * n;
      StateSaveOptions o;
      const uint64_t size = state_size_seq(cache, 0, fp, o);
      EXPECT_EQ(size, formula_bytes(cache.layout(), fp, n, 1, 1)) << what;
      EXPECT_LE(size, cache_bytes + cache_bytes / 1000 + 4096) << what << ": overhead " << size - cache_bytes;
      // 1.0's 16 bytes per cell: the exact size too, and for q4_0 over the bound (why 1.1 exists).
      o.format_minor = 0;
      const uint64_t size10 = state_size_seq(cache, 0, fp, o);
      EXPECT_EQ(size10, formula_bytes(cache.layout(), fp, n, 0, 0)) << what;
      if (t == DType::Q4_0) {
        EXPECT_GT(size10, cache_bytes + cache_bytes / 1000 + 4096) << what;
      }
      if (n == 1024 && t == DType::Q8_0) {
        // The size is the writer's own: a real write has exactly that many bytes.
        CountingSink sink;
        auto r = state_write_seq(cache, 0, fp, {}, sink);
        ASSERT_TRUE(r.is_ok()) << r.status().to_string();
        EXPECT_EQ(sink.n_written(), size);
        EXPECT_EQ(r->n_bytes, size);
      }
    }
}

}  // namespace
}  // namespace kvstash
