// The restore's row paths (src/state/state_rows.h) on a synthetic layout (no model): rows read in
// place into runs of consecutive free cells, through the buffer into holes, converted, and spread
// over a thread pool. Every restore must put each file row, bit for bit, into the cell of its
// position; a corrupt file must leave every sequence and every occupied row as it was; threaded
// and single-threaded restores must give the same cache and, on failure, the same Status.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "core/le.h"
#include "core/threadpool.h"
#include "kv/kv_cache.h"
#include "state/state.h"
#include "state/state_format.h"
#include "state/state_hash.h"
#include "state_fixtures.h"

namespace kvstash {
namespace {

// 1300 rows: a K section (2048-byte f16 rows) spans 2.5 of the reader's 1 MiB pieces.
constexpr uint32_t kTokens = 1300;
constexpr uint32_t kLayers = 3;

const ModelFingerprint& fingerprint() {
  static const ModelFingerprint fp = {"llama", "rows-test", 11, 12, 13, 14, 1000};
  return fp;
}

// K: 4 heads x 256 (f16: 2048-byte rows); V: 1 head x 64 (f16: 128-byte rows).
KvLayout layout(uint32_t n_cells, DType tk, DType tv) {
  std::vector<std::vector<KvLayout::StreamRequest>> req(kLayers);
  for (auto& l : req) {
    l.push_back({KvStream::K, tk, 1024, 4});
    l.push_back({KvStream::V, tv, 64, 1});
  }
  KvLayout out;
  EXPECT_EQ(KvLayout::make(n_cells, req, &out), "");
  return out;
}

// Deterministic bytes that are valid numbers for every type (f16/bf16/f32 halves of small
// floats; quantized blocks with sane scales), so converted rows are comparable.
void fill_rows(KvCache& c, uint32_t cell0, uint32_t n, uint32_t seed) {
  const KvLayout& L = c.layout();
  std::vector<float> x;
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
      const KvRowSpec& s = L.layer(il).streams[si];
      x.resize(s.group_elems());
      for (uint32_t k = 0; k < n; ++k)
        for (uint32_t g = 0; g < s.n_groups; ++g) {
          for (uint32_t e = 0; e < x.size(); ++e)
            x[e] = float(int((seed * 2654435761u + il * 977u + si * 131u + (cell0 + k) * 31u + g * 7u + e * 13u) % 2001u) - 1000) / 256.0f;
          quantize_row_ref(s.dtype, x.data(), c.row(il, si, cell0 + k) + g * s.group_bytes, static_cast<uint32_t>(x.size()));
        }
    }
}

// A cache whose sequence 0 holds kTokens positions 0..n-1 in cells 0..n-1, saved to bytes.
std::vector<uint8_t> saved_file(DType tk, DType tv, KvCache** keep = nullptr) {
  static std::vector<std::unique_ptr<KvCache>> caches;
  auto c = std::make_unique<KvCache>(layout(kTokens + 4, tk, tv));
  fill_rows(*c, 0, kTokens, 1);
  for (uint32_t i = 0; i < kTokens; ++i) c->cell_assign(i, static_cast<int32_t>(i), 0, static_cast<int32_t>(i % 997));
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  StateSaveOptions o;
  o.created_ms = 1700000000000ull;
  auto r = state_write_seq(*c, 0, fingerprint(), o, sink);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  if (keep) {
    *keep = c.get();
    caches.push_back(std::move(c));
  }
  return out;
}

// Destination patterns: which cells other sequences hold before the restore.
enum class Dest { Empty, Mixed, EveryOther };
const Dest kDests[] = {Dest::Empty, Dest::Mixed, Dest::EveryOther};
const char* dest_name(Dest d) { return d == Dest::Empty ? "contiguous" : d == Dest::Mixed ? "mixed runs" : "every other cell"; }

// Mixed: free runs of 9 cells (buffered for both streams: 18 KiB of K), 300 cells (in place for
// K's 2048-byte rows: 600 KiB; buffered for V's 128-byte rows: 37.5 KiB), single cells, and a
// long tail (in place for both).
std::vector<uint32_t> taken_cells(Dest d, uint32_t n_cells) {
  std::vector<uint32_t> t;
  if (d == Dest::Mixed) {
    for (uint32_t c : {9u, 310u, 312u, 314u, 316u}) t.push_back(c);
    for (uint32_t c = 320; c < 340; c += 2) t.push_back(c);
  } else if (d == Dest::EveryOther) {
    for (uint32_t c = 0; c < n_cells && t.size() < kTokens; c += 2) t.push_back(c);
  }
  return t;
}

std::unique_ptr<KvCache> target(Dest d, DType tk, DType tv) {
  const uint32_t n_cells = 2 * kTokens + 16;
  auto c = std::make_unique<KvCache>(layout(n_cells, tk, tv));
  // Stale bytes everywhere, like a used cache (occupied cells must keep theirs).
  const KvLayout& L = c->layout();
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
      uint8_t* p = c->row(il, si, 0);
      for (size_t i = 0; i + 8 <= L.layer(il).streams[si].row_bytes * n_cells; i += 8) {
        const uint64_t v = (i + il * 131 + si) * 0x9e3779b97f4a7c15ull;
        std::memcpy(p + i, &v, 8);
      }
    }
  const std::vector<uint32_t> taken = taken_cells(d, n_cells);
  for (size_t i = 0; i < taken.size(); ++i) c->cell_assign(taken[i], static_cast<int32_t>(i), 5, 42);
  return c;
}

using test::Snapshot;
using test::snapshot;

// Restores `file` into sequence 2 of `c`.
Result<StateLoadResult> restore(KvCache& c, const std::vector<uint8_t>& file, ThreadPool* pool, ByteSource* src = nullptr) {
  MemSource mem(file.data(), file.size());
  StateLoadOptions o;
  o.pool = pool;
  return state_read_seq(c, 2, fingerprint(), src ? *src : mem, o);
}

void expect_restored(const KvCache& c, const KvCache& want, const Snapshot& before, const std::string& what) {
  std::vector<uint32_t> cells;
  c.seq_cells_sorted(2, &cells);
  ASSERT_EQ(cells.size(), kTokens) << what;
  const KvLayout& L = c.layout();
  std::vector<float> tmp;
  std::vector<uint8_t> conv;
  for (uint32_t k = 0; k < kTokens; ++k) {
    ASSERT_EQ(c.cell_pos(cells[k]), static_cast<int32_t>(k)) << what;
    ASSERT_EQ(c.cell_token(cells[k]), static_cast<int32_t>(k % 997)) << what;
    ASSERT_EQ(c.cell_seqs(cells[k]), uint64_t(1) << 2) << what;
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
        const KvRowSpec& ls = L.layer(il).streams[si];
        const KvRowSpec& ws = want.layout().layer(il).streams[si];
        const uint8_t* expect = want.row(il, si, k);
        if (ws.dtype != ls.dtype) {  // the reference conversion, group by group
          conv.assign(ls.row_bytes, 0);
          tmp.resize(ws.group_elems());
          for (uint32_t g = 0; g < ws.n_groups; ++g) {
            dequantize_row_ref(ws.dtype, expect + g * ws.group_bytes, tmp.data(), ws.group_elems());
            quantize_row_ref(ls.dtype, tmp.data(), conv.data() + g * ls.group_bytes, ws.group_elems());
          }
          expect = conv.data();
        }
        ASSERT_EQ(std::memcmp(c.row(il, si, cells[k]), expect, ls.row_bytes), 0) << what << ": row " << k << " layer " << il << " stream " << si;
      }
  }
  // Every cell that was not free before keeps its sequences and position.
  for (uint32_t i = 0; i < c.n_cells(); ++i) {
    if (before.seqs[i] == 0) continue;
    ASSERT_EQ(c.cell_seqs(i), before.seqs[i]) << what << " cell " << i;
    ASSERT_EQ(c.cell_pos(i), before.pos[i]) << what << " cell " << i;
  }
  // The rows of the cells that were occupied before, in cell order, are the ones they had.
  std::vector<uint8_t> kept;
  for (uint32_t i = 0; i < c.n_cells(); ++i) {
    if (before.seqs[i] == 0) continue;
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si)
        kept.insert(kept.end(), c.row(il, si, i), c.row(il, si, i) + L.layer(il).streams[si].row_bytes);
  }
  ASSERT_EQ(kept, before.rows) << what;
}

// The KVDT sections of a file this test wrote: {frame offset, payload bytes}.
std::vector<std::pair<size_t, size_t>> kv_sections(const std::vector<uint8_t>& b) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t p = load_le<uint32_t>(b.data() + 16);
  while (p < b.size()) {
    const size_t len = static_cast<size_t>(load_le<uint64_t>(b.data() + p + 8));
    if (load_le<uint32_t>(b.data() + p) == statefmt::kTagKv) out.push_back({p, len});
    p += 16 + len + 8;
  }
  return out;
}

// Section number (§1 order) of the i-th KVDT section: META MODL LAYT CELL come first.
uint32_t kv_section_number(size_t i) { return static_cast<uint32_t>(4 + i); }

// ======================================================================= round trips

TEST(StateRows, EveryDestinationPatternGetsBitIdenticalRows) {
  ThreadPool pool(3);
  for (auto [tk, tv] : {std::pair{DType::F16, DType::F16}, std::pair{DType::Q8_0, DType::Q4_0}, std::pair{DType::F32, DType::Q8_KV}}) {
    KvCache* src = nullptr;
    const std::vector<uint8_t> file = saved_file(tk, tv, &src);
    for (Dest d : kDests)
      for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
        const std::string what = std::string(dtype_name(tk)) + "/" + dtype_name(tv) + " " + dest_name(d) + (p ? " 3 threads" : " 1 thread");
        auto c = target(d, tk, tv);
        const Snapshot before = snapshot(*c);
        auto r = restore(*c, file, p);
        ASSERT_TRUE(r.is_ok()) << what << ": " << r.status().to_string();
        EXPECT_FALSE(r->two_pass) << what;
        expect_restored(*c, *src, before, what);
      }
  }
}

TEST(StateRows, TheMixedPatternHasTheRunsItIsMeantToHave) {
  // Guards the test above: the first free cells are a 9-cell run, a 300-cell run, single
  // cells, then the tail, so rows go in place and through the buffer within one section.
  auto c = target(Dest::Mixed, DType::F16, DType::F16);
  std::vector<uint32_t> free(kTokens);
  ASSERT_TRUE(c->find_free(kTokens, free.data()).is_ok());
  std::vector<uint32_t> runs;
  for (uint32_t k = 0; k < kTokens; ++k)
    if (k == 0 || free[k] != free[k - 1] + 1) runs.push_back(1);
    else ++runs.back();
  ASSERT_GE(runs.size(), 4u);
  EXPECT_EQ(runs[0], 9u);
  EXPECT_EQ(runs[1], 300u);
  EXPECT_EQ(runs[2], 1u);
  EXPECT_GE(size_t(runs[0]) * 2048, size_t(16) << 10);  // K: buffered, but not tiny
  EXPECT_LT(size_t(runs[0]) * 2048, size_t(64) << 10);
  EXPECT_GE(size_t(runs[1]) * 2048, size_t(64) << 10);  // K: in place
  EXPECT_LT(size_t(runs[1]) * 128, size_t(64) << 10);  // V: buffered
  EXPECT_GE(size_t(runs.back()) * 128, size_t(64) << 10);
}

TEST(StateRows, ConvertedRowsAreTheReferenceConversionWithAndWithoutThreads) {
  ThreadPool pool(2);
  KvCache* src = nullptr;
  const std::vector<uint8_t> file = saved_file(DType::F16, DType::Q8_0, &src);
  for (Dest d : kDests)
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      const std::string what = std::string("f16/q8_0 -> f32/f16 ") + dest_name(d) + (p ? " 2 threads" : " 1 thread");
      auto c = target(d, DType::F32, DType::F16);
      const Snapshot before = snapshot(*c);
      auto r = restore(*c, file, p);
      ASSERT_TRUE(r.is_ok()) << what << ": " << r.status().to_string();
      EXPECT_TRUE(r->converted);
      expect_restored(*c, *src, before, what);
    }
}

// ======================================================================= corruption

TEST(StateRows, CorruptLastRowOfTheLastSectionLeavesTheCacheUnchanged) {
  ThreadPool pool(2);
  const std::vector<uint8_t> file = saved_file(DType::F16, DType::F16);
  const auto kv = kv_sections(file);
  ASSERT_EQ(kv.size(), 2u * kLayers);
  struct Case {
    size_t offset;
    uint32_t section;
  };
  const Case cases[] = {
      {kv.back().first + 16 + kv.back().second - 1, kv_section_number(kv.size() - 1)},  // last byte of the last row
      {kv.back().first + 16 + kv.back().second - 128, kv_section_number(kv.size() - 1)},  // first byte of the last row (V: 128 B)
      {kv.front().first + 16 + 8, kv_section_number(0)},                                // first row of the first section
      {kv[2].first + 16 + 8 + 2048 * 700, kv_section_number(2)},                         // in the second in-place piece
  };
  for (const Case& cs : cases)
    for (Dest d : kDests)
      for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
        const std::string what = "byte " + std::to_string(cs.offset) + " " + dest_name(d) + (p ? " 2 threads" : " 1 thread");
        std::vector<uint8_t> b = file;
        b[cs.offset] ^= 0x10;
        auto c = target(d, DType::F16, DType::F16);
        const Snapshot before = snapshot(*c);
        auto r = restore(*c, b, p);
        ASSERT_FALSE(r.is_ok()) << what;
        EXPECT_EQ(r.status().code(), StatusCode::Corruption) << what;
        EXPECT_NE(r.status().message().find("checksum mismatch in section " + std::to_string(cs.section) + " ('KVDT')"), std::string::npos)
            << what << ": " << r.status().message();
        ASSERT_TRUE(snapshot(*c) == before) << what;
      }
}

TEST(StateRows, ThreadedAndSingleThreadedRestoresFailAlikeOnEveryCorruption) {
  // Single-byte changes across the KV sections (frames, prefixes, rows, trailers), pairs of
  // damaged sections, and cuts with a patched header: the Status (code and message) of a
  // threaded restore equals the section-by-section one, and the cache is unchanged.
  ThreadPool pool(3);
  const std::vector<uint8_t> file = saved_file(DType::Q8_0, DType::F16);
  const auto kv = kv_sections(file);
  std::vector<std::vector<uint8_t>> bad;
  for (const auto& [frame, len] : kv) {
    for (size_t o : {size_t(0), size_t(4), size_t(8), size_t(15), size_t(16), size_t(20), size_t(24), 16 + len / 3, 16 + len - 1, 16 + len,
                     16 + len + 7}) {
      std::vector<uint8_t> b = file;
      b[frame + o] += 1;
      bad.push_back(std::move(b));
    }
  }
  for (size_t i = 0; i + 2 < kv.size(); ++i) {
    std::vector<uint8_t> b = file;
    b[kv[i + 2].first + 16 + 100] ^= 1;  // later payload
    b[kv[i].first + 16 + 100] ^= 1;      // earlier payload: named
    bad.push_back(b);
    b = file;
    b[kv[i + 2].first] ^= 1;        // later frame (tag)
    b[kv[i].first + 16 + 9] ^= 1;   // earlier payload: named
    bad.push_back(b);
    b = file;
    b[kv[i + 2].first + 16 + 9] ^= 1;  // later payload
    b[kv[i].first + 1] ^= 1;           // earlier frame: named
    bad.push_back(b);
  }
  for (const auto& [frame, len] : kv)
    for (size_t cut : {frame + 8, frame + 16 + len / 2, frame + 16 + len + 4}) {
      std::vector<uint8_t> b(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(cut));
      store_le<uint64_t>(b.data() + 24, b.size());
      store_le<uint64_t>(b.data() + 56, 0);
      store_le<uint64_t>(b.data() + 56, XXH3_64bits(b.data(), 64));
      bad.push_back(std::move(b));
    }
  ASSERT_GT(bad.size(), 80u);
  for (Dest d : {Dest::Empty, Dest::Mixed}) {
    // A refused restore leaves the cache as it was (asserted each time), so one target serves all.
    auto c1 = target(d, DType::Q8_0, DType::F16);
    auto c3 = target(d, DType::Q8_0, DType::F16);
    const Snapshot before = snapshot(*c1);
    for (size_t i = 0; i < bad.size(); ++i) {
      auto r1 = restore(*c1, bad[i], nullptr);
      auto r3 = restore(*c3, bad[i], &pool);
      ASSERT_FALSE(r1.is_ok()) << "bad file " << i;
      ASSERT_FALSE(r3.is_ok()) << "bad file " << i;
      EXPECT_EQ(r1.status().code(), r3.status().code()) << "bad file " << i;
      EXPECT_EQ(r1.status().message(), r3.status().message()) << "bad file " << i;
      ASSERT_TRUE(snapshot(*c1) == before) << "bad file " << i << " (1 thread): " << r1.status().message();
      ASSERT_TRUE(snapshot(*c3) == before) << "bad file " << i << " (3 threads): " << r3.status().message();
    }
  }
}

TEST(StateRows, TheFirstDamagedSectionInFileOrderIsNamed) {
  ThreadPool pool(2);
  const std::vector<uint8_t> file = saved_file(DType::F16, DType::F16);
  const auto kv = kv_sections(file);
  std::vector<uint8_t> b = file;
  b[kv[4].first + 16 + 50] ^= 1;
  b[kv[1].first + 16 + 50] ^= 1;
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
    auto c = target(Dest::Empty, DType::F16, DType::F16);
    auto r = restore(*c, b, p);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("checksum mismatch in section " + std::to_string(kv_section_number(1)) + " ('KVDT')"), std::string::npos)
        << r.status().message();
  }
  // A damaged frame after a damaged payload: the payload's section comes first in the file.
  b = file;
  b[kv[3].first] = 'X';
  b[kv[2].first + 16 + 50] ^= 1;
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
    auto c = target(Dest::Empty, DType::F16, DType::F16);
    auto r = restore(*c, b, p);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("checksum mismatch in section " + std::to_string(kv_section_number(2))), std::string::npos)
        << r.status().message();
  }
  // A damaged frame before a damaged payload: the frame is named.
  b = file;
  b[kv[2].first] = 'X';
  b[kv[3].first + 16 + 50] ^= 1;
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
    auto c = target(Dest::Empty, DType::F16, DType::F16);
    auto r = restore(*c, b, p);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("expected section 'KVDT', found 'XVDT'"), std::string::npos) << r.status().message();
  }
}

// ======================================================================= threads

// A MemSource that records which threads read KV rows (reads past kv_begin longer than a frame:
// frames are read by the caller before any section starts). With `hold`, the first thread to read
// rows waits there (at most 10 s) until another thread has read rows: it shows that a second
// thread takes sections, and cannot hang when none does.
class WatchedSource final : public ByteSource {
 public:
  WatchedSource(const std::vector<uint8_t>& b, size_t kv_begin, bool concurrent, bool hold)
      : mem_(b.data(), b.size()), kv_begin_(kv_begin), concurrent_(concurrent), hold_(hold), caller_(std::this_thread::get_id()) {}
  uint64_t size() const override { return mem_.size(); }
  bool concurrent_reads() const override { return concurrent_; }
  Status read_at(uint64_t off, void* p, size_t n) override {
    if (off >= kv_begin_ && n > statefmt::kFrameBytes) {
      std::unique_lock<std::mutex> lk(mu_);
      readers_.insert(std::this_thread::get_id());
      cv_.notify_all();
      if (hold_ && !held_) {
        held_ = true;
        cv_.wait_for(lk, std::chrono::seconds(10), [&] { return readers_.size() > 1; });
      }
    }
    return mem_.read_at(off, p, n);
  }
  std::set<std::thread::id> readers() {
    std::lock_guard<std::mutex> lk(mu_);
    return readers_;
  }
  std::thread::id caller() const { return caller_; }

 private:
  MemSource mem_;
  size_t kv_begin_;
  bool concurrent_, hold_;
  std::thread::id caller_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::thread::id> readers_;
  bool held_ = false;
};

TEST(StateRows, SectionsRunOnThePoolOnlyWhenTheSourceAllowsConcurrentReads) {
  ThreadPool pool(2);
  KvCache* src = nullptr;
  const std::vector<uint8_t> file = saved_file(DType::F16, DType::F16, &src);
  const size_t kv_begin = kv_sections(file).front().first;
  {
    WatchedSource ws(file, kv_begin, /*concurrent=*/false, /*hold=*/false);
    auto c = target(Dest::Empty, DType::F16, DType::F16);
    const Snapshot before = snapshot(*c);
    ASSERT_TRUE(restore(*c, file, &pool, &ws).is_ok());
    EXPECT_EQ(ws.readers(), std::set<std::thread::id>{ws.caller()});
    expect_restored(*c, *src, before, "serial source");
  }
  {
    WatchedSource ws(file, kv_begin, /*concurrent=*/true, /*hold=*/true);
    auto c = target(Dest::Mixed, DType::F16, DType::F16);
    const Snapshot before = snapshot(*c);
    ASSERT_TRUE(restore(*c, file, &pool, &ws).is_ok());
    EXPECT_EQ(ws.readers().size(), 2u);
    expect_restored(*c, *src, before, "concurrent source");
  }
}

// ======================================================================= checksum implementation

TEST(StateHash, DispatchedXxh3EqualsTheReferenceForEveryLengthAndSplit) {
  std::vector<uint8_t> b(5000);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 131 + (i >> 7));
  StateHasher h;
  for (size_t n = 0; n <= 2100; n += (n < 300 ? 1 : 37)) {
    const uint64_t want = XXH3_64bits(b.data(), n);
    ASSERT_EQ(state_hash(b.data(), n), want) << n;
    for (size_t cut : {size_t(0), n / 3, n / 2, n}) {
      h.reset();
      h.update(b.data(), cut);
      h.update(b.data() + cut, n - cut);
      ASSERT_EQ(h.digest(), want) << n << " split at " << cut;
    }
  }
  h.reset();
  for (size_t o = 0; o < b.size(); o += 1000) h.update(b.data() + o, 1000);
  EXPECT_EQ(h.digest(), XXH3_64bits(b.data(), b.size()));
}

}  // namespace
}  // namespace kvstash
