// State files against a live stories260K cache (docs/state-format.md §2-§5): every truncation
// and single-byte corruption is refused and leaves every sequence exactly as it was; errors name
// the model hash, layout field, section or limit; newer minors with unknown optional sections
// load; empty sequences, whole contexts, fragmented caches and the two-pass restore (§5.4) round
// trip with bit-identical next-token logits.
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/le.h"
#include "engine/context.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "state/state.h"
#include "state/state_format.h"
#include "alloc_counter.h"
#include "state_fixtures.h"
#include "model_fixture.h"
#include "test_paths.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;
using test::Snapshot;
using test::snapshot;
using test::unchanged;

// ---- fixtures ----

const Model& stories() { return test::stories_model(); }

const char* kTextA = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine with her dog Max.";
const char* kTextB = "One day, a big bear came out of the forest.";
const char* kTextC = "Tom and Sue went to the park to play on the swings and the slide.";
const char* kTextD =
    "The sun was shining and the birds were singing in the tall green trees. A little boy named Ben sat under a tree and ate his"
    " red apple.";

// The first n tokens of text (BOS included); the text must be long enough.
std::vector<int32_t> tokens(const char* text, size_t n) {
  std::vector<int32_t> t = stories().vocab().tokenize(text, true);
  if (t.size() < n) throw std::runtime_error("test prompt too short");
  t.resize(n);
  return t;
}

std::unique_ptr<Context> make_ctx(uint32_t n_ctx, DType tk = DType::F16, DType tv = DType::F16) {
  ContextParams cp;
  cp.n_ctx = n_ctx;
  cp.n_threads = 2;
  cp.type_k = tk;
  cp.type_v = tv;
  auto c = Context::create(stories(), cp);
  if (!c.is_ok()) throw std::runtime_error(c.status().to_string());
  return std::move(c).value();
}

int32_t n_vocab() { return static_cast<int32_t>(stories().hparams().n_vocab); }

// Prefills seq from position 0 and returns a copy of the last token's logits.
std::vector<float> prefill(Context& ctx, SeqId seq, const std::vector<int32_t>& t) {
  auto lg = ctx.eval(seq, t.data(), static_cast<int32_t>(t.size()), 0);
  if (!lg.is_ok()) throw std::runtime_error(lg.status().to_string());
  return std::vector<float>(lg.value(), lg.value() + n_vocab());
}

std::vector<uint8_t> save_seq(const KvCache& cache, SeqId seq, const std::vector<float>* logits = nullptr) {
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  StateSaveOptions o;
  o.created_ms = 1700000000000ull;
  if (logits) {
    o.logits = logits->data();
    o.n_logits = static_cast<uint32_t>(logits->size());
  }
  auto r = state_write_seq(cache, seq, stories().fingerprint(), o, sink);
  if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
  return out;
}

Result<StateLoadResult> load_seq(KvCache& cache, SeqId dest, const std::vector<uint8_t>& b, size_t n = SIZE_MAX,
                                 const ModelFingerprint* fp = nullptr, StateLoadOptions o = {}) {
  MemSource src(b.data(), std::min(n, b.size()));
  return state_read_seq(cache, dest, fp ? *fp : stories().fingerprint(), src, o);
}

// Greedy continuation: n tokens from `first` logits, evaluating each; returns every logits row
// (the first included) back to back, and the tokens.
struct Continuation {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
};
Continuation greedy(Context& ctx, SeqId seq, std::vector<float> first, int32_t pos, int n) {
  Continuation c;
  c.logits = first;
  std::vector<float> cur = std::move(first);
  for (int i = 0; i < n; ++i) {
    const int32_t t = static_cast<int32_t>(std::max_element(cur.begin(), cur.end()) - cur.begin());
    c.tokens.push_back(t);
    auto r = ctx.eval(seq, &t, 1, pos++);
    if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
    cur.assign(r.value(), r.value() + n_vocab());
    c.logits.insert(c.logits.end(), cur.begin(), cur.end());
  }
  return c;
}

::testing::AssertionResult same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "logit " << i << " (row " << i / n_vocab() << "): " << a[i] << " vs " << b[i];
  return ::testing::AssertionSuccess();
}

// ---- raw file surgery ----

struct Sec {
  uint32_t tag, flags;
  size_t frame, len;  // frame offset, payload bytes
  size_t payload() const { return frame + 16; }
  size_t trailer() const { return frame + 16 + len; }
  size_t end() const { return frame + 16 + len + 8; }
};

std::string tag_str(uint32_t t) { return std::string(reinterpret_cast<const char*>(&t), 4); }

// Trusted parse of a file this test wrote.
std::vector<Sec> sections(const std::vector<uint8_t>& b) {
  std::vector<Sec> out;
  size_t p = load_le<uint32_t>(b.data() + 16);
  while (p < b.size()) {
    Sec s{load_le<uint32_t>(b.data() + p), load_le<uint32_t>(b.data() + p + 4), p, static_cast<size_t>(load_le<uint64_t>(b.data() + p + 8))};
    out.push_back(s);
    p = s.end();
  }
  EXPECT_EQ(p, b.size());
  return out;
}

void fix_header(std::vector<uint8_t>& b) {
  const uint32_t hb = load_le<uint32_t>(b.data() + 16);
  store_le<uint64_t>(b.data() + 56, 0);
  store_le<uint64_t>(b.data() + 56, XXH3_64bits(b.data(), hb));
}

// Inserts a section before END and updates the header (count, file bytes, minor, checksum).
std::vector<uint8_t> insert_section(const std::vector<uint8_t>& b, const char* tag, uint32_t flags, const std::vector<uint8_t>& payload,
                                    uint16_t minor) {
  const std::vector<Sec> ss = sections(b);
  const Sec& end = ss.back();
  std::vector<uint8_t> sec(16 + payload.size() + 8);
  std::memcpy(sec.data(), tag, 4);
  store_le<uint32_t>(sec.data() + 4, flags);
  store_le<uint64_t>(sec.data() + 8, payload.size());
  if (!payload.empty()) std::memcpy(sec.data() + 16, payload.data(), payload.size());
  store_le<uint64_t>(sec.data() + 16 + payload.size(), XXH3_64bits(payload.data(), payload.size()));
  std::vector<uint8_t> out(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(end.frame));
  out.insert(out.end(), sec.begin(), sec.end());
  out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(end.frame), b.end());
  store_le<uint16_t>(out.data() + 10, minor);
  store_le<uint32_t>(out.data() + 32, load_le<uint32_t>(out.data() + 32) + 1);
  store_le<uint64_t>(out.data() + 24, out.size());
  fix_header(out);
  return out;
}

// Cache contents by (sequence set, position), independent of cell indices.
struct Canon {
  std::vector<std::tuple<uint64_t, int32_t, int32_t, std::vector<uint8_t>>> cells;
  bool operator==(const Canon&) const = default;
};
Canon canon(const KvCache& c) {
  Canon k;
  const KvLayout& L = c.layout();
  for (uint32_t i = 0; i < c.n_cells(); ++i) {
    if (c.cell_empty(i)) continue;
    std::vector<uint8_t> rows;
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
        const uint8_t* r = c.row(il, si, i);
        rows.insert(rows.end(), r, r + L.layer(il).streams[si].row_bytes);
      }
    k.cells.emplace_back(c.cell_seqs(i), c.cell_pos(i), c.cell_token(i), std::move(rows));
  }
  std::sort(k.cells.begin(), k.cells.end());
  return k;
}

std::vector<int32_t> seq_positions(const KvCache& c, SeqId s) {
  std::vector<uint32_t> cells;
  c.seq_cells_sorted(s, &cells);
  std::vector<int32_t> p;
  for (uint32_t x : cells) p.push_back(c.cell_pos(x));
  return p;
}

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// ======================================================================= corruption

constexpr size_t kSavedTokens = 31;

// Seq 0: the saved 31 tokens; seq 1: 12 other tokens (a restore target that holds cells);
// seq 2: 20 tokens nobody touches; seq 3: empty (the other restore target).
class StateCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = make_ctx(256);
    logits_ = prefill(*ctx_, 0, tokens(kTextA, kSavedTokens));
    prefill(*ctx_, 1, tokens(kTextB, 12));
    prefill(*ctx_, 2, tokens(kTextC, 20));
    file_ = save_seq(ctx_->cache(), 0, &logits_);
    before_ = snapshot(ctx_->cache());
  }

  // Restores `b` (first n bytes) into seq 1 and seq 3: both must fail and change nothing.
  void expect_refused(const std::vector<uint8_t>& b, size_t n, const std::string& what, bool want_trunc_msg) {
    for (SeqId dest : {1, 3}) {
      auto r = load_seq(ctx_->cache(), dest, b, n);
      ASSERT_FALSE(r.is_ok()) << what << " was accepted (restore into seq " << dest << ")";
      const std::string& m = r.status().message();
      ASSERT_TRUE(has(m, "state: ")) << what << ": " << m;
      if (want_trunc_msg) {
        ASSERT_TRUE(has(m, "truncated") || has(m, "section")) << what << ": " << m;
      }
      ASSERT_TRUE(unchanged(ctx_->cache(), before_)) << what << " changed the cache (restore into seq " << dest << ")";
    }
  }

  std::unique_ptr<Context> ctx_;
  std::vector<float> logits_;
  std::vector<uint8_t> file_;
  Snapshot before_;
};

TEST_F(StateCorruption, EveryTruncationIsRefusedAndChangesNothing) {
  ASSERT_GT(file_.size(), 20000u);
  for (size_t n = 0; n < file_.size() && !HasFatalFailure(); ++n)
    expect_refused(file_, n, "prefix of " + std::to_string(n) + " bytes", true);
  // Cuts with the header's file size and checksum patched to match, so that the section walk
  // itself must catch them: every cut outside the KV and logits payloads, and five inside each.
  // (Each restore that reaches the KV data costs a 1 MiB read buffer, slow under ASan.)
  std::vector<size_t> cuts;
  std::vector<bool> in_payload(file_.size(), false);
  for (const Sec& s : sections(file_))
    if (s.tag == statefmt::kTagKv || s.tag == statefmt::kTagLogits) {
      for (size_t o = s.payload() + 1; o < s.trailer(); ++o) in_payload[o] = true;
      for (size_t o : {s.payload() + 1, s.payload() + 8, s.payload() + 9, s.payload() + s.len / 2, s.trailer() - 1}) cuts.push_back(o);
    }
  for (size_t n = 64; n < file_.size(); ++n)
    if (!in_payload[n]) cuts.push_back(n);
  ASSERT_GT(cuts.size(), 1000u);
  std::vector<uint8_t> b = file_;
  for (size_t n : cuts) {
    if (HasFatalFailure()) return;
    store_le<uint64_t>(b.data() + 24, n);
    fix_header(b);
    expect_refused(b, n, "prefix of " + std::to_string(n) + " bytes with a patched header", true);
  }
  // The good file still restores into both targets.
  ASSERT_TRUE(load_seq(ctx_->cache(), 3, file_).is_ok());
  ASSERT_TRUE(load_seq(ctx_->cache(), 1, file_).is_ok());
  EXPECT_EQ(ctx_->cache().seq_n_cells(1), kSavedTokens);
  EXPECT_EQ(ctx_->cache().seq_n_cells(3), kSavedTokens);
  EXPECT_EQ(ctx_->cache().seq_n_cells(2), 20u);
}

// Re-checksums section `s` of `b` after its payload was patched.
void fix_section(std::vector<uint8_t>& b, const Sec& s) {
  store_le<uint64_t>(b.data() + s.trailer(), XXH3_64bits(b.data() + s.payload(), s.len));
}

// Counts read from a file never size an allocation before they are checked against what the
// file can hold (docs/reliability.md): claims of billions of cells, rows, logits, sections and
// bytes are refused at once, allocating no more than a small file's worth.
TEST_F(StateCorruption, ClaimedCountsAreRefusedBeforeAllocating) {
  const std::vector<Sec> ss = sections(file_);
  ASSERT_EQ(tag_str(ss[0].tag), "META");
  ASSERT_EQ(tag_str(ss[2].tag), "LAYT");
  ASSERT_EQ(tag_str(ss[4].tag), "KVDT");
  struct Case {
    std::string what;
    std::vector<uint8_t> bytes;
  };
  std::vector<Case> cases;
  auto patched = [&](const std::string& what, auto&& edit) {
    std::vector<uint8_t> b = file_;
    edit(b);
    cases.push_back({what, std::move(b)});
  };
  constexpr uint64_t kTrillion = 1000000000000ull;
  // n_tokens = 4e9 in META, and every LAYT row count agreeing with it: only the cells section can
  // tell, and it must, before 4e9 cells are allocated.
  auto claim_4e9 = [&](std::vector<uint8_t>& b) {
    store_le<uint32_t>(b.data() + ss[0].payload() + 12, 4000000000u);
    fix_section(b, ss[0]);
    const size_t layers = load_le<uint32_t>(b.data() + ss[2].payload());
    size_t o = ss[2].payload() + 4;
    for (size_t il = 0; il < layers; ++il) {
      const uint32_t n_streams = load_le<uint32_t>(b.data() + o);
      o += 4;
      for (uint32_t si = 0; si < n_streams; ++si, o += 32) store_le<uint64_t>(b.data() + o + 24, 4000000000u);
    }
    fix_section(b, ss[2]);
  };
  patched("META n_tokens 4e9 with matching LAYT row counts", claim_4e9);
  ASSERT_EQ(tag_str(ss[3].tag), "CEL2");
  patched("META, LAYT and CEL2 n_cells 4e9 (one run of 4e9)", [&](std::vector<uint8_t>& b) {
    claim_4e9(b);
    store_le<uint32_t>(b.data() + ss[3].payload(), 4000000000u);
    store_le<uint32_t>(b.data() + ss[3].payload() + 8 + 4, 4000000000u);
    fix_section(b, ss[3]);
  });
  patched("CEL2 n_runs 4e9", [&](std::vector<uint8_t>& b) {
    store_le<uint32_t>(b.data() + ss[3].payload() + 4, 4000000000u);
    fix_section(b, ss[3]);
  });
  patched("LAYT row count 1e12", [&](std::vector<uint8_t>& b) {
    store_le<uint64_t>(b.data() + ss[2].payload() + 4 + 4 + 24, kTrillion);
    fix_section(b, ss[2]);
  });
  patched("META n_logits 4e9", [&](std::vector<uint8_t>& b) {
    store_le<uint32_t>(b.data() + ss[0].payload() + 20, 4000000000u);
    fix_section(b, ss[0]);
  });
  patched("KVDT frame of 1e12 bytes", [&](std::vector<uint8_t>& b) { store_le<uint64_t>(b.data() + ss[4].frame + 8, kTrillion); });
  patched("CEL2 frame of 1e12 bytes", [&](std::vector<uint8_t>& b) { store_le<uint64_t>(b.data() + ss[3].frame + 8, kTrillion); });
  patched("header: 1e12 file bytes", [&](std::vector<uint8_t>& b) {
    store_le<uint64_t>(b.data() + 24, kTrillion);
    fix_header(b);
  });
  patched("header: 4e9 sections", [&](std::vector<uint8_t>& b) {
    store_le<uint32_t>(b.data() + 32, 4000000000u);
    fix_header(b);
  });
  patched("header: 4e9 header bytes", [&](std::vector<uint8_t>& b) { store_le<uint32_t>(b.data() + 16, 4000000000u); });
  const int64_t limit = int64_t(file_.size()) * 4;  // a small file's worth, not the claim's
  for (const Case& c : cases) {
    const int64_t before = test::bytes_allocated();
    MemSource src(c.bytes.data(), c.bytes.size());
    auto info = state_inspect(src);
    const int64_t used = test::bytes_allocated() - before;
    ASSERT_FALSE(info.is_ok()) << c.what;
    EXPECT_EQ(info.status().code(), StatusCode::Corruption) << c.what << ": " << info.status().to_string();
    EXPECT_TRUE(has(info.status().message(), "state: ")) << c.what;
    EXPECT_LT(used, limit) << c.what << ": " << info.status().to_string();
    const int64_t before_restore = test::bytes_allocated();
    expect_refused(c.bytes, c.bytes.size(), c.what, false);
    EXPECT_LT(test::bytes_allocated() - before_restore, 2 * limit + (int64_t(2) << 20)) << c.what;  // + the 1 MiB read buffer, twice
  }
}

TEST_F(StateCorruption, EverySingleByteCorruptionIsRefusedAndChangesNothing) {
  const std::vector<Sec> ss = sections(file_);
  // META MODL LAYT CELL, 10 x KVDT (5 layers x K, V), LOGT, END!
  ASSERT_EQ(ss.size(), 4u + 10u + 2u);
  std::vector<std::pair<size_t, std::string>> offsets;  // offset, where
  for (size_t o = 0; o < 64; ++o) offsets.push_back({o, "header"});
  size_t n_kv = 0;
  for (size_t i = 0; i < ss.size(); ++i) {
    const Sec& s = ss[i];
    const std::string nm = tag_str(s.tag) + " (section " + std::to_string(i) + ")";
    if (s.tag == statefmt::kTagKv || s.tag == statefmt::kTagLogits) {
      n_kv += s.tag == statefmt::kTagKv;
      for (size_t o = s.frame; o < s.payload(); ++o) offsets.push_back({o, nm + " frame"});
      for (size_t o = s.trailer(); o < s.end(); ++o) offsets.push_back({o, nm + " trailer"});
      for (size_t o : {size_t(0), size_t(1), size_t(4), size_t(8), s.len / 2, s.len - 1}) offsets.push_back({s.payload() + o, nm + " payload"});
    } else {
      for (size_t o = s.frame; o < s.end(); ++o) offsets.push_back({o, nm});
    }
  }
  ASSERT_EQ(n_kv, 10u);
  size_t n_checked = 0;
  for (const auto& [off, where] : offsets) {
    for (int variant = 0; variant < 2; ++variant) {
      std::vector<uint8_t> b = file_;
      b[off] = variant == 0 ? uint8_t(b[off] ^ 0x5a) : uint8_t(b[off] + 1);
      expect_refused(b, b.size(), where + " byte " + std::to_string(off) + (variant == 0 ? " ^ 0x5a" : " + 1"), false);
      if (HasFatalFailure()) return;
      ++n_checked;
    }
  }
  RecordProperty("corruptions_checked", std::to_string(n_checked));
  EXPECT_GT(n_checked, 2000u);
}

// ======================================================================= messages

class StateMessages : public StateCorruption {};

TEST_F(StateMessages, ChecksumMismatchNamesTheSection) {
  const std::vector<Sec> ss = sections(file_);
  for (const Sec& s : ss) {
    if (s.len == 0) continue;
    std::vector<uint8_t> b = file_;
    b[s.payload() + s.len - 1] ^= 0x01;
    auto r = load_seq(ctx_->cache(), 3, b);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::Corruption);
    EXPECT_TRUE(has(r.status().message(), "checksum mismatch")) << r.status().message();
    EXPECT_TRUE(has(r.status().message(), "'" + tag_str(s.tag) + "'")) << r.status().message();
  }
  std::vector<uint8_t> b = file_;
  b[40] ^= 1;  // reserved header byte: the checksum catches it first
  auto r = load_seq(ctx_->cache(), 3, b);
  EXPECT_TRUE(has(r.status().message(), "header checksum mismatch")) << r.status().message();
  EXPECT_TRUE(snapshot(ctx_->cache()) == before_);
}

TEST_F(StateMessages, AnotherModelIsRefusedNamingTheHash) {
  const ModelFingerprint live = stories().fingerprint();
  struct Case {
    const char* what;
    void (*change)(ModelFingerprint&);
  };
  const Case cases[] = {
      {"hyperparameters", [](ModelFingerprint& f) { f.hparams_hash ^= 1; }},
      {"tokenizer", [](ModelFingerprint& f) { f.tokenizer_hash ^= 1; }},
      {"tensor directory", [](ModelFingerprint& f) { f.tensors_hash ^= 1; }},
      {"weights", [](ModelFingerprint& f) { f.weights_hash ^= 1; }},
      {"architecture", [](ModelFingerprint& f) { f.arch = "deepseek2"; }},
      {"vocabulary", [](ModelFingerprint& f) { f.n_vocab += 1; }},
  };
  for (const Case& c : cases) {
    ModelFingerprint other = live;
    c.change(other);
    for (SeqId dest : {1, 3}) {
      auto r = load_seq(ctx_->cache(), dest, file_, SIZE_MAX, &other);
      ASSERT_FALSE(r.is_ok()) << c.what;
      EXPECT_EQ(r.status().code(), StatusCode::InvalidArgument) << c.what;
      EXPECT_TRUE(has(r.status().message(), c.what)) << c.what << ": " << r.status().message();
      EXPECT_TRUE(snapshot(ctx_->cache()) == before_) << c.what;
    }
  }
  // The name is informational: a renamed but otherwise identical model is the same model.
  ModelFingerprint renamed = live;
  renamed.name = "renamed";
  EXPECT_TRUE(load_seq(ctx_->cache(), 3, file_, SIZE_MAX, &renamed).is_ok());
}

TEST_F(StateMessages, SynthesizedModelIsRefused) {
  const fs::path dir = fs::temp_directory_path() / ("kvstash_state_gen_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  ModelGenSpec spec;
  spec.vocab_path = test::model_path("ggml-vocab-llama-spm.gguf");
  spec.n_layer = 1;
  spec.n_embd = 32;
  spec.n_head = 2;
  spec.n_head_kv = 1;
  spec.n_ff = 32;
  spec.type = DType::F16;
  const std::string path = (dir / "gen.gguf").string();
  ASSERT_TRUE(model_gen_write(spec, path).is_ok());
  auto other = Model::load(path);
  ASSERT_TRUE(other.is_ok()) << other.status().to_string();
  ContextParams cp;
  cp.n_ctx = 64;
  cp.n_threads = 1;
  auto octx = Context::create(**other, cp);
  ASSERT_TRUE(octx.is_ok());
  MemSource src(file_.data(), file_.size());
  auto r = state_read_seq((*octx)->cache(), 0, (*other)->fingerprint(), src, {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::InvalidArgument);
  EXPECT_TRUE(has(r.status().message(), "another model")) << r.status().message();
  EXPECT_TRUE(has(r.status().message(), "hyperparameters")) << r.status().message();
  EXPECT_EQ((*octx)->cache().n_used(), 0u);
  fs::remove_all(dir);
}

TEST_F(StateMessages, AnotherLayoutIsRefusedNamingLayerAndField) {
  const KvLayout& live = ctx_->cache().layout();
  const uint32_t nl = live.n_layers();
  const uint32_t e = live.layer(0).streams[0].elems_per_row, g = live.layer(0).streams[0].n_groups;
  auto layout = [&](uint32_t n_layers, auto&& edit) {
    std::vector<std::vector<KvLayout::StreamRequest>> req(n_layers);
    for (uint32_t il = 0; il < n_layers; ++il) {
      req[il].push_back({KvStream::K, DType::F16, e, g});
      req[il].push_back({KvStream::V, DType::F16, e, g});
    }
    edit(req);
    KvLayout l;
    EXPECT_EQ(KvLayout::make(64, req, &l), "");
    return l;
  };
  struct Case {
    KvLayout l;
    std::vector<std::string> want;
    StateLoadOptions opt;
  };
  std::vector<Case> cases;
  cases.push_back({layout(nl - 1, [](auto&) {}), {"layout mismatch", std::to_string(nl) + " layers", "the cache " + std::to_string(nl - 1)}, {}});
  cases.push_back({layout(nl, [&](auto& r) { r[3][1].elems_per_row = 2 * e; }), {"layer 3 V", "elems_per_row " + std::to_string(e)}, {}});
  cases.push_back({layout(nl, [&](auto& r) { r[2][0].n_groups = 2 * g; }), {"layer 2 K", "groups " + std::to_string(g)}, {}});
  cases.push_back({layout(nl, [&](auto& r) { r[4].pop_back(); }), {"layer 4", "2 streams in the file, 1 live"}, {}});
  cases.push_back({layout(nl, [&](auto& r) { r[1][1].stream = KvStream::MlaLatent; }), {"layer 1 V", "latent"}, {}});
  StateLoadOptions no_convert;
  no_convert.allow_convert = false;
  cases.push_back({layout(nl, [&](auto& r) { r[0][0].dtype = DType::F32; }), {"layer 0 K", "f16", "f32", "conversion disabled"}, no_convert});
  for (Case& c : cases) {
    KvCache cache(c.l);
    for (uint32_t i = 0; i < 5; ++i) cache.cell_assign(i, static_cast<int32_t>(i), 3, 7);
    const Snapshot s0 = snapshot(cache);
    MemSource src(file_.data(), file_.size());
    auto r = state_read_seq(cache, 3, stories().fingerprint(), src, c.opt);
    ASSERT_FALSE(r.is_ok()) << c.want[0];
    EXPECT_EQ(r.status().code(), StatusCode::InvalidArgument);
    for (const std::string& w : c.want) EXPECT_TRUE(has(r.status().message(), w)) << "want '" << w << "' in: " << r.status().message();
    EXPECT_TRUE(snapshot(cache) == s0);
  }
  // With conversion allowed the f32 K cache takes the file, and says so.
  KvCache conv(layout(nl, [&](auto& r) { r[0][0].dtype = DType::F32; }));
  MemSource src(file_.data(), file_.size());
  auto r = state_read_seq(conv, 0, stories().fingerprint(), src, {});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->converted);
  EXPECT_TRUE(has(r->conversion, "K f16 -> f32")) << r->conversion;
}

TEST_F(StateMessages, TooManyTokensForTheContextOrTheFreeCells) {
  {  // n_ctx 16 < 31 tokens
    auto l = stories().kv_layout(16, DType::F16, DType::F16);
    ASSERT_TRUE(l.is_ok());
    KvCache small(std::move(l).value());
    MemSource src(file_.data(), file_.size());
    auto r = state_read_seq(small, 0, stories().fingerprint(), src, {});
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::ResourceExhausted);
    EXPECT_TRUE(has(r.status().message(), "31 tokens, more than the context's 16 cells")) << r.status().message();
    EXPECT_EQ(small.n_used(), 0u);
  }
  {  // 48 cells, 30 held by two other sequences (one cell shared), target holds 4: 18 + 4 < 31
    auto l = stories().kv_layout(48, DType::F16, DType::F16);
    ASSERT_TRUE(l.is_ok());
    KvCache c(std::move(l).value());
    for (uint32_t i = 0; i < 15; ++i) c.cell_assign(i, static_cast<int32_t>(i), 1, 5);
    for (uint32_t i = 0; i < 15; ++i) c.cell_assign(15 + i, static_cast<int32_t>(i), 2, 6);
    for (uint32_t i = 0; i < 4; ++i) c.cell_assign(30 + i, static_cast<int32_t>(i), 3, 7);
    c.seq_cp(1, 3, 10, 11);  // seq 3 shares one cell of seq 1: not freed by replacing seq 3
    const Snapshot s0 = snapshot(c);
    MemSource src(file_.data(), file_.size());
    auto r = state_read_seq(c, 3, stories().fingerprint(), src, {});
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::ResourceExhausted);
    EXPECT_TRUE(has(r.status().message(), "31 tokens, only 18 cells are free")) << r.status().message();
    EXPECT_TRUE(snapshot(c) == s0);
  }
}

TEST_F(StateMessages, UnsupportedMajorVersionAndWrongKind) {
  std::vector<uint8_t> b = file_;
  store_le<uint16_t>(b.data() + 8, 2);
  fix_header(b);
  auto r = load_seq(ctx_->cache(), 3, b);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::Unsupported);
  EXPECT_TRUE(has(r.status().message(), "version 2." + std::to_string(statefmt::kMinor) + " is not supported")) << r.status().message();
  MemSource s2(b.data(), b.size());
  EXPECT_EQ(state_inspect(s2).status().code(), StatusCode::Unsupported);

  // A whole-context file is not a sequence, and the other way round.
  std::vector<uint8_t> all;
  BufferSink sink(&all);
  ASSERT_TRUE(state_write_all(ctx_->cache(), stories().fingerprint(), {}, sink).is_ok());
  auto k = load_seq(ctx_->cache(), 3, all);
  ASSERT_FALSE(k.is_ok());
  EXPECT_EQ(k.status().code(), StatusCode::InvalidArgument);
  EXPECT_TRUE(has(k.status().message(), "holds a whole context, expected one sequence")) << k.status().message();
  MemSource one(file_.data(), file_.size());
  auto k2 = state_read_all(ctx_->cache(), stories().fingerprint(), one, {});
  ASSERT_FALSE(k2.is_ok());
  EXPECT_TRUE(has(k2.status().message(), "holds one sequence, expected a whole context")) << k2.status().message();
  EXPECT_TRUE(snapshot(ctx_->cache()) == before_);
  // Bad sequence ids are arguments, not file problems.
  EXPECT_EQ(load_seq(ctx_->cache(), 64, file_).status().code(), StatusCode::InvalidArgument);
  EXPECT_EQ(load_seq(ctx_->cache(), -1, file_).status().code(), StatusCode::InvalidArgument);
}

TEST_F(StateMessages, WriterRefusesLogitsThatAreNotOneVocabularyRow) {
  // §4.1: n_logits is 0 or n_vocab. A writer that accepted any count would write files that its
  // own reader refuses.
  for (uint32_t n : {1u, static_cast<uint32_t>(n_vocab() - 1), static_cast<uint32_t>(n_vocab() + 1)}) {
    std::vector<float> lg(n, 1.0f);
    StateSaveOptions o;
    o.logits = lg.data();
    o.n_logits = n;
    std::vector<uint8_t> out;
    BufferSink sink(&out);
    auto w = state_write_seq(ctx_->cache(), 0, stories().fingerprint(), o, sink);
    ASSERT_FALSE(w.is_ok()) << n << " logits were written";
    EXPECT_EQ(w.status().code(), StatusCode::InvalidArgument);
    EXPECT_TRUE(has(w.status().message(), "logits")) << w.status().message();
    EXPECT_TRUE(out.empty());
    std::vector<uint8_t> all;
    BufferSink sink2(&all);
    EXPECT_FALSE(state_write_all(ctx_->cache(), stories().fingerprint(), o, sink2).is_ok());
  }
}

// ======================================================================= forward compatibility

class StateCompat : public StateCorruption {};

TEST_F(StateCompat, UnknownOptionalSectionOfANewerMinorIsSkipped) {
  const std::vector<uint8_t> payload = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  const std::vector<uint8_t> b = insert_section(file_, "XTRA", 0, payload, statefmt::kMinor + 1);
  MemSource src(b.data(), b.size());
  auto info = state_inspect(src);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->minor, statefmt::kMinor + 1);
  EXPECT_EQ(info->unknown_sections, std::vector<std::string>{"XTRA"});
  auto r = load_seq(ctx_->cache(), 3, b);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_tokens, kSavedTokens);
  EXPECT_TRUE(same_bits(r->logits, logits_));
  // Restored rows equal the saved sequence's rows.
  std::vector<uint32_t> a, c;
  ctx_->cache().seq_cells_sorted(0, &a);
  ctx_->cache().seq_cells_sorted(3, &c);
  ASSERT_EQ(a.size(), c.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (uint32_t il = 0; il < 5; ++il)
      for (uint32_t si = 0; si < 2; ++si)
        ASSERT_EQ(0, std::memcmp(ctx_->cache().row(il, si, a[i]), ctx_->cache().row(il, si, c[i]),
                                 ctx_->cache().layout().layer(il).streams[si].row_bytes));
  // An empty unknown section, and one inserted with a wrong checksum (refused).
  EXPECT_TRUE(load_seq(ctx_->cache(), 4, insert_section(file_, "ZERO", 0, {}, statefmt::kMinor + 2)).is_ok());
  std::vector<uint8_t> bad = b;
  bad[sections(b)[sections(b).size() - 2].payload()] ^= 0xff;
  auto rb = load_seq(ctx_->cache(), 5, bad);
  EXPECT_TRUE(has(rb.status().message(), "checksum mismatch")) << rb.status().message();
  EXPECT_TRUE(has(rb.status().message(), "'XTRA'")) << rb.status().message();
}

TEST_F(StateCompat, LongerHeaderOfANewerMinorIsRead) {
  // Header bytes 80: the extra 16 bytes belong to the newer minor and are covered by the checksum.
  std::vector<uint8_t> b(file_.begin(), file_.begin() + 64);
  b.insert(b.end(), 16, 0xab);
  b.insert(b.end(), file_.begin() + 64, file_.end());
  store_le<uint32_t>(b.data() + 16, 80);
  store_le<uint16_t>(b.data() + 10, 2);
  store_le<uint64_t>(b.data() + 24, b.size());
  fix_header(b);
  auto r = load_seq(ctx_->cache(), 3, b);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_tokens, kSavedTokens);
  b[70] ^= 1;
  auto r2 = load_seq(ctx_->cache(), 4, b);
  EXPECT_TRUE(has(r2.status().message(), "header checksum mismatch")) << r2.status().message();
}

TEST_F(StateCompat, UnknownRequiredSectionIsUnsupportedNamingTheTag) {
  const std::vector<uint8_t> b = insert_section(file_, "NEWR", 1, {42, 43}, 1);
  auto r = load_seq(ctx_->cache(), 3, b);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::Unsupported);
  EXPECT_TRUE(has(r.status().message(), "'NEWR'")) << r.status().message();
  MemSource src(b.data(), b.size());
  EXPECT_EQ(state_inspect(src).status().code(), StatusCode::Unsupported);
  EXPECT_TRUE(snapshot(ctx_->cache()) == before_);
  // Unknown flag bits are corruption, not a newer feature.
  const std::vector<uint8_t> f = insert_section(file_, "FLAG", 2, {1}, 1);
  EXPECT_EQ(load_seq(ctx_->cache(), 3, f).status().code(), StatusCode::Corruption);
}

TEST_F(StateCompat, LogitsAnnouncedButMissingOrDuplicatedAreRefused) {
  const std::vector<Sec> ss = sections(file_);
  const Sec& lg = ss[ss.size() - 2];
  ASSERT_EQ(tag_str(lg.tag), "LOGT");
  // Drop LOGT but keep META n_logits: the logits the file promises are gone.
  std::vector<uint8_t> b(file_.begin(), file_.begin() + static_cast<std::ptrdiff_t>(lg.frame));
  b.insert(b.end(), file_.begin() + static_cast<std::ptrdiff_t>(lg.end()), file_.end());
  store_le<uint32_t>(b.data() + 32, load_le<uint32_t>(b.data() + 32) - 1);
  store_le<uint64_t>(b.data() + 24, b.size());
  fix_header(b);
  auto r = load_seq(ctx_->cache(), 3, b);
  ASSERT_FALSE(r.is_ok());
  EXPECT_TRUE(has(r.status().message(), "LOGT")) << r.status().message();
  // Two LOGT sections.
  std::vector<uint8_t> payload(file_.begin() + static_cast<std::ptrdiff_t>(lg.payload()), file_.begin() + static_cast<std::ptrdiff_t>(lg.trailer()));
  auto r2 = load_seq(ctx_->cache(), 3, insert_section(file_, "LOGT", 0, payload, statefmt::kMinor));
  ASSERT_FALSE(r2.is_ok());
  EXPECT_TRUE(has(r2.status().message(), "LOGT")) << r2.status().message();
  EXPECT_TRUE(snapshot(ctx_->cache()) == before_);
}

// ======================================================================= empty and whole-context files

TEST(StateEmpty, EmptySequenceRoundTripsAndEmptiesTheTarget) {
  auto ctx = make_ctx(128);
  prefill(*ctx, 1, tokens(kTextB, 12));
  prefill(*ctx, 2, tokens(kTextC, 9));
  std::vector<uint8_t> empty;
  BufferSink sink(&empty);
  auto w = state_write_seq(ctx->cache(), 7, stories().fingerprint(), {}, sink);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  EXPECT_EQ(w->n_tokens, 0u);
  EXPECT_EQ(w->n_bytes, empty.size());
  EXPECT_EQ(state_size_seq(ctx->cache(), 7, stories().fingerprint(), {}), empty.size());
  MemSource src(empty.data(), empty.size());
  auto info = state_inspect(src);
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->layout.n_cells(), 0u);
  EXPECT_EQ(info->layout.n_layers(), stories().hparams().n_layer);
  EXPECT_EQ(info->kv_bytes, 0u);
  EXPECT_EQ(info->saved_seq, 7);
  EXPECT_TRUE(info->cell_pos.empty());

  const std::vector<int32_t> p2 = seq_positions(ctx->cache(), 2);
  auto r = load_seq(ctx->cache(), 1, empty);  // a target that holds 12 tokens
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_tokens, 0u);
  EXPECT_TRUE(r->tokens.empty());
  EXPECT_EQ(ctx->cache().seq_n_cells(1), 0u);
  EXPECT_EQ(ctx->cache().n_used(), 9u);
  EXPECT_EQ(seq_positions(ctx->cache(), 2), p2);
  auto r2 = load_seq(ctx->cache(), 5, empty);  // an empty target
  ASSERT_TRUE(r2.is_ok());
  EXPECT_EQ(ctx->cache().n_used(), 9u);
  // Every truncation of the zero-cell file is refused too.
  for (size_t n = 0; n < empty.size(); ++n) EXPECT_FALSE(load_seq(ctx->cache(), 2, empty, n).is_ok()) << n;
  EXPECT_EQ(seq_positions(ctx->cache(), 2), p2);
}

TEST(StateEmpty, WholeContextRoundTripsWithSharedCells) {
  auto ctx = make_ctx(256);
  const std::vector<int32_t> a = tokens(kTextA, 20), c = tokens(kTextC, 14), d = tokens(kTextD, 10);
  prefill(*ctx, 0, a);
  ctx->cache().seq_cp(0, 1, 0, 12);  // seq 1 shares the first 12 cells of seq 0 ...
  auto r1 = ctx->eval(1, d.data() + 1, 6, 12);  // ... and continues on its own
  ASSERT_TRUE(r1.is_ok());
  prefill(*ctx, 2, c);
  ASSERT_EQ(ctx->cache().n_used(), 20u + 6u + 14u);

  std::vector<uint8_t> all;
  BufferSink sink(&all);
  auto w = state_write_all(ctx->cache(), stories().fingerprint(), {}, sink);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  EXPECT_EQ(w->n_tokens, 40u);
  MemSource src(all.data(), all.size());
  auto info = state_inspect(src);
  ASSERT_TRUE(info.is_ok());
  EXPECT_EQ(info->kind, StateKind::Context);
  EXPECT_EQ(std::count(info->cell_seqs.begin(), info->cell_seqs.end(), uint64_t(0b011)), 12);

  // Into a context that holds something else: replaced as a whole.
  auto ctx2 = make_ctx(128);
  prefill(*ctx2, 5, tokens(kTextB, 8));
  MemSource src2(all.data(), all.size());
  auto r = state_read_all(ctx2->cache(), stories().fingerprint(), src2, {});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_tokens, 40u);
  EXPECT_TRUE(canon(ctx2->cache()) == canon(ctx->cache()));
  EXPECT_EQ(ctx2->cache().seq_n_cells(5), 0u);
  // Each sequence continues exactly as in the original context.
  for (SeqId s : {0, 1, 2}) {
    const int32_t t = 3 + s, pos = ctx->cache().seq_pos_max(s) + 1;
    auto x = ctx->eval(s, &t, 1, pos);
    ASSERT_TRUE(x.is_ok());
    const std::vector<float> lx(x.value(), x.value() + n_vocab());
    auto y = ctx2->eval(s, &t, 1, pos);
    ASSERT_TRUE(y.is_ok());
    EXPECT_TRUE(same_bits(lx, std::vector<float>(y.value(), y.value() + n_vocab()))) << "seq " << s;
  }
  // Every truncation of the context file is refused and leaves ctx2 as it was.
  const Canon c2 = canon(ctx2->cache());
  for (size_t n = 0; n < all.size(); n += 7) {
    MemSource t(all.data(), n);
    ASSERT_FALSE(state_read_all(ctx2->cache(), stories().fingerprint(), t, {}).is_ok()) << n;
  }
  EXPECT_TRUE(canon(ctx2->cache()) == c2);

  // An empty context saves and restores into a full one, emptying it.
  auto e = make_ctx(64);
  std::vector<uint8_t> none;
  BufferSink s3(&none);
  ASSERT_TRUE(state_write_all(e->cache(), stories().fingerprint(), {}, s3).is_ok());
  MemSource src3(none.data(), none.size());
  auto re = state_read_all(ctx2->cache(), stories().fingerprint(), src3, {});
  ASSERT_TRUE(re.is_ok()) << re.status().to_string();
  EXPECT_EQ(ctx2->cache().n_used(), 0u);
}

// ======================================================================= fragmented caches

TEST(StateFragmented, RestoreIntoHolesGivesBitIdenticalContinuation) {
  const std::vector<int32_t> prompt = tokens(kTextA, kSavedTokens);
  // The uninterrupted run.
  auto ref = make_ctx(256);
  const std::vector<float> lg = prefill(*ref, 0, prompt);
  const std::vector<uint8_t> file = save_seq(ref->cache(), 0, &lg);
  const Continuation want = greedy(*ref, 0, lg, static_cast<int32_t>(prompt.size()), 8);

  // Four sequences decoded interleaved, then every other one removed: holes at every other cell.
  auto ctx = make_ctx(256);
  const std::vector<int32_t> fill[4] = {tokens(kTextB, 10), tokens(kTextC, 10), tokens(kTextD, 10), tokens(kTextA, 10)};
  Batch b;
  for (int32_t p = 0; p < 10; ++p)
    for (SeqId s = 0; s < 4; ++s) b.add(fill[s][p], p, s, false);
  ASSERT_TRUE(ctx->decode(b).is_ok());
  ctx->cache().seq_rm(1, -1, -1);
  ctx->cache().seq_rm(3, -1, -1);
  ASSERT_EQ(ctx->cache().n_used(), 20u);

  auto r = load_seq(ctx->cache(), 6, file);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_FALSE(r->two_pass);
  std::vector<uint32_t> cells;
  ctx->cache().seq_cells_sorted(6, &cells);
  ASSERT_EQ(cells.size(), kSavedTokens);
  EXPECT_EQ(cells[0], 1u);
  EXPECT_EQ(cells[1], 3u);  // non-contiguous: the holes between seq 0 and seq 2
  EXPECT_EQ(cells[19], 39u);
  EXPECT_EQ(cells[20], 40u);
  EXPECT_EQ(seq_positions(ctx->cache(), 6), r->positions);
  EXPECT_EQ(r->tokens, prompt);
  const Continuation got = greedy(*ctx, 6, r->logits, static_cast<int32_t>(prompt.size()), 8);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_TRUE(same_bits(got.logits, want.logits));
  // Recomputing the last prompt token from the restored cells gives the saved logits exactly.
  auto ctx3 = make_ctx(256);
  ASSERT_TRUE(ctx3->decode(b).is_ok());
  ctx3->cache().seq_rm(0, -1, -1);
  ctx3->cache().seq_rm(2, -1, -1);
  ASSERT_TRUE(load_seq(ctx3->cache(), 9, file).is_ok());
  ctx3->cache().seq_rm(9, static_cast<int32_t>(prompt.size()) - 1, -1);
  auto again = ctx3->eval(9, &prompt.back(), 1, static_cast<int32_t>(prompt.size()) - 1);
  ASSERT_TRUE(again.is_ok());
  EXPECT_TRUE(same_bits(std::vector<float>(again.value(), again.value() + n_vocab()), lg));
}

// ======================================================================= two-pass restore (§5.4)

// A file that returns other bytes once the first pass has read its END section.
class ChangingSource final : public ByteSource {
 public:
  ChangingSource(const std::vector<uint8_t>& first, const std::vector<uint8_t>& then, uint64_t end_frame)
      : first_(first), then_(then), end_frame_(end_frame) {}
  uint64_t size() const override { return first_.size(); }
  Status read_at(uint64_t off, void* p, size_t n) override {
    const std::vector<uint8_t>& b = switched_ ? then_ : first_;
    if (off > b.size() || n > b.size() - off) return corruption("state: truncated (test source)");
    std::memcpy(p, b.data() + off, n);
    if (off == end_frame_) switched_ = true;
    return Status::ok();
  }

 private:
  const std::vector<uint8_t>& first_;
  const std::vector<uint8_t>& then_;
  uint64_t end_frame_;
  bool switched_ = false;
};

TEST(StateTwoPass, RestoreWhenOnlyTheTargetsOwnCellsMakeRoom) {
  const std::vector<int32_t> prompt = tokens(kTextA, kSavedTokens);
  auto ref = make_ctx(256);
  const std::vector<float> lg = prefill(*ref, 0, prompt);
  const std::vector<uint8_t> file = save_seq(ref->cache(), 0, &lg);
  const Continuation want = greedy(*ref, 0, lg, static_cast<int32_t>(prompt.size()), 8);

  // 64 cells: target seq 1 holds 40 (2 of them shared with seq 2), seq 2 holds 10 more: 14
  // free, 14 + 38 own >= 31.
  auto ctx = make_ctx(64);
  prefill(*ctx, 1, tokens(kTextD, 40));
  prefill(*ctx, 2, tokens(kTextC, 10));
  ctx->cache().seq_cp(1, 2, 30, 32);
  ASSERT_EQ(ctx->cache().n_used(), 50u);
  const Snapshot before = snapshot(ctx->cache());
  const std::vector<int32_t> p2 = seq_positions(ctx->cache(), 2);

  // Corrupted and truncated files are refused with the target intact.
  const std::vector<Sec> ss = sections(file);
  std::vector<std::vector<uint8_t>> bad;
  for (const Sec& s : ss) {
    std::vector<uint8_t> b = file;
    b[s.trailer() + 3] ^= 0x5a;
    bad.push_back(b);
    if (s.len > 0) {
      b = file;
      b[s.payload() + s.len - 1] += 1;
      bad.push_back(b);
    }
  }
  for (size_t n : {file.size() - 1, file.size() - 30, ss[9].payload() + 100}) {
    std::vector<uint8_t> b(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(n));
    store_le<uint64_t>(b.data() + 24, n);
    fix_header(b);
    bad.push_back(b);
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    auto r = load_seq(ctx->cache(), 1, bad[i]);
    ASSERT_FALSE(r.is_ok()) << "bad file " << i;
    ASSERT_TRUE(snapshot(ctx->cache()) == before) << "bad file " << i << ": " << r.status().message();
  }

  // A file that changes between the passes: the second pass fails, the target is left empty.
  {
    auto c2 = make_ctx(64);
    prefill(*c2, 1, tokens(kTextD, 40));
    prefill(*c2, 2, tokens(kTextC, 10));
    std::vector<uint8_t> changed = file;
    changed[ss[6].payload() + 20] ^= 1;
    ChangingSource src(file, changed, ss.back().frame);
    auto r = state_read_seq(c2->cache(), 1, stories().fingerprint(), src, {});
    ASSERT_FALSE(r.is_ok());
    EXPECT_TRUE(has(r.status().message(), "checksum mismatch")) << r.status().message();
    EXPECT_TRUE(has(r.status().message(), "target was left empty")) << r.status().message();
    EXPECT_EQ(c2->cache().seq_n_cells(1), 0u);
    EXPECT_EQ(c2->cache().seq_n_cells(2), 10u);
  }

  auto r = load_seq(ctx->cache(), 1, file);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->two_pass);
  EXPECT_EQ(ctx->cache().seq_n_cells(1), kSavedTokens);
  EXPECT_EQ(seq_positions(ctx->cache(), 2), p2);
  EXPECT_EQ(ctx->cache().n_used(), kSavedTokens + 12u);  // the 2 shared cells stay with seq 2
  const Continuation got = greedy(*ctx, 1, r->logits, static_cast<int32_t>(prompt.size()), 8);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_TRUE(same_bits(got.logits, want.logits));
}

}  // namespace
}  // namespace kvstash
