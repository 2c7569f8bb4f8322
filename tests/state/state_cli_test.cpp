// The kvstash binary with state files: `run --prompt-cache` saves, restores and reuses a shared
// prefix with unchanged greedy output; `state inspect|verify|convert` print, check and rewrite
// files, and a converted file continues exactly like the same conversion done in-process.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "core/le.h"
#include "engine/context.h"
#include "model/model.h"
#include "state/state.h"
#include "cli_runner.h"
#include "model_fixture.h"
#include "test_paths.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;

using test::Proc;
using test::slurp;


bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

const Model& stories() { return test::stories_model(); }

const char* kShort = "Once upon a time, there was a little girl named Lily";
const char* kLong = "Once upon a time, there was a little girl named Lily. She liked to play in the park with her friends";

class StateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvstash_state_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = test::model_path("stories260K.gguf");
  }
  void TearDown() override { fs::remove_all(dir_); }

  Proc run(const std::string& args) { return test::run_kvstash(dir_, args); }
  // Greedy generation of 24 tokens, optionally through a prompt cache.
  Proc generate(const char* prompt, const std::string& cache = "", const std::string& extra = "") {
    return run("run -m " + model_ + " -p \"" + prompt + "\" -n 24 --temp 0 -t 2 -c 256" + (cache.empty() ? "" : " --prompt-cache " + cache) +
               (extra.empty() ? "" : " " + extra));
  }
  fs::path dir_;
  std::string model_;
};

size_t n_tokens(const char* text) { return stories().vocab().tokenize(text, true).size(); }

TEST_F(StateCli, PromptCacheSavesRestoresAndComputesOnlyTheSuffix) {
  const std::string cache = (dir_ / "prompt.kvs").string();
  const size_t n_short = n_tokens(kShort), n_long = n_tokens(kLong);
  const std::vector<int32_t> ts = stories().vocab().tokenize(kShort, true), tl = stories().vocab().tokenize(kLong, true);
  size_t common = 0;
  while (common < ts.size() && common < tl.size() && ts[common] == tl[common]) ++common;
  ASSERT_GT(common, 5u);
  ASSERT_GT(n_long, common);

  const Proc plain = generate(kShort);
  ASSERT_EQ(plain.code, 0) << plain.err;
  const Proc first = generate(kShort, cache);
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_TRUE(has(first.err, "prompt cache: saved " + std::to_string(n_short) + " tokens")) << first.err;
  EXPECT_EQ(first.out, plain.out);
  ASSERT_TRUE(fs::exists(cache));

  const Proc second = generate(kShort, cache);
  ASSERT_EQ(second.code, 0) << second.err;
  EXPECT_TRUE(has(second.err, "prompt cache: restored " + std::to_string(n_short) + " of " + std::to_string(n_short) + " cached tokens"))
      << second.err;
  EXPECT_TRUE(has(second.err, "computing 0")) << second.err;
  EXPECT_FALSE(has(second.err, "prompt cache: saved")) << second.err;
  EXPECT_EQ(second.out, first.out);

  // A longer prompt sharing the prefix computes only the rest, and prints what a fresh run prints.
  const Proc plain_long = generate(kLong);
  ASSERT_EQ(plain_long.code, 0) << plain_long.err;
  const Proc longer = generate(kLong, cache);
  ASSERT_EQ(longer.code, 0) << longer.err;
  EXPECT_TRUE(has(longer.err, "restored " + std::to_string(common) + " of " + std::to_string(n_short) + " cached tokens")) << longer.err;
  EXPECT_TRUE(has(longer.err, "computing " + std::to_string(n_long - common))) << longer.err;
  EXPECT_TRUE(has(longer.err, "prompt cache: saved " + std::to_string(n_long) + " tokens")) << longer.err;
  EXPECT_EQ(longer.out, plain_long.out);

  // A cached prompt longer than the new one: only the shared prefix is reused, never the stale
  // suffix (anchors #23), and at least the last prompt token is recomputed for its logits.
  const size_t reuse = common == n_short ? n_short - 1 : common;
  const Proc shorter = generate(kShort, cache);
  ASSERT_EQ(shorter.code, 0) << shorter.err;
  EXPECT_TRUE(has(shorter.err, "restored " + std::to_string(reuse) + " of " + std::to_string(n_long) + " cached tokens")) << shorter.err;
  EXPECT_TRUE(has(shorter.err, "computing " + std::to_string(n_short - reuse))) << shorter.err;
  EXPECT_EQ(shorter.out, plain.out);

  // A damaged cache is reported, not used, and replaced.
  std::string bytes = slurp(cache);
  bytes[bytes.size() / 2] ^= 0x20;
  std::ofstream(cache, std::ios::binary | std::ios::trunc) << bytes;
  const Proc damaged = generate(kLong, cache);
  ASSERT_EQ(damaged.code, 0) << damaged.err;
  EXPECT_TRUE(has(damaged.err, "prompt cache: not used")) << damaged.err;
  EXPECT_TRUE(has(damaged.err, "checksum mismatch")) << damaged.err;
  EXPECT_EQ(damaged.out, plain_long.out);
  EXPECT_EQ(run("state verify " + cache).code, 0);
}

TEST_F(StateCli, InspectAndVerify) {
  const std::string f = (dir_ / "p.kvs").string();
  ASSERT_EQ(generate(kShort, f).code, 0);
  const std::string n = std::to_string(n_tokens(kShort));

  const Proc ins = run("state inspect " + f + " -m " + model_);
  ASSERT_EQ(ins.code, 0) << ins.err;
  EXPECT_TRUE(has(ins.out, "kvstash state 1.1, one sequence")) << ins.out;
  EXPECT_TRUE(has(ins.out, "cells:      CEL2, 1 run of consecutive positions + 4 bytes per token")) << ins.out;
  EXPECT_TRUE(has(ins.out, "tokens:     " + n)) << ins.out;
  EXPECT_TRUE(has(ins.out, "with last-position logits")) << ins.out;
  EXPECT_TRUE(has(ins.out, "layer 0")) << ins.out;
  EXPECT_TRUE(has(ins.out, "K f16[32]")) << ins.out;
  EXPECT_TRUE(has(ins.out, "\ntext:")) << ins.out;
  EXPECT_TRUE(has(ins.out, "Once upon a time, there was a little girl named Lily")) << ins.out;
  EXPECT_TRUE(has(ins.out, "matches the model")) << ins.out;
  const Proc bare = run("state inspect " + f);
  ASSERT_EQ(bare.code, 0) << bare.err;
  EXPECT_FALSE(has(bare.out, "\ntext:")) << bare.out;

  const Proc ok = run("state verify " + f);
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_TRUE(has(ok.out, "OK (" + n + " tokens")) << ok.out;
  const Proc bound = run("state verify " + f + " -m " + model_);
  EXPECT_EQ(bound.code, 0) << bound.err;
  EXPECT_TRUE(has(bound.out, "bound to this model")) << bound.out;

  std::string bytes = slurp(f);
  const fs::path bad = dir_ / "bad.kvs";
  bytes[bytes.size() / 2] += 1;  // inside a KVDT section
  std::ofstream(bad, std::ios::binary) << bytes;
  const Proc v = run("state verify " + bad.string());
  EXPECT_EQ(v.code, 1);
  EXPECT_TRUE(has(v.err, "checksum")) << v.err;
  EXPECT_TRUE(has(v.err, "KVDT")) << v.err;
  const Proc i = run("state inspect " + bad.string());
  EXPECT_EQ(i.code, 1);
  EXPECT_TRUE(has(i.err, "checksum")) << i.err;
  const Proc trunc = run("state verify " + (dir_ / "missing.kvs").string());
  EXPECT_EQ(trunc.code, 1);
  EXPECT_TRUE(has(trunc.err, "cannot open")) << trunc.err;
  std::ofstream(dir_ / "short.kvs", std::ios::binary) << bytes.substr(0, 1000);
  const Proc cut = run("state verify " + (dir_ / "short.kvs").string());
  EXPECT_EQ(cut.code, 1);
  EXPECT_TRUE(has(cut.err, "truncated")) << cut.err;
}

// ---- convert ----

std::vector<uint8_t> bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

// Payload and trailer of every KVDT and LOGT section, back to back.
std::vector<uint8_t> kv_and_logits(const std::vector<uint8_t>& b) {
  std::vector<uint8_t> out;
  size_t p = load_le<uint32_t>(b.data() + 16);
  while (p + 24 <= b.size()) {
    const uint32_t tag = load_le<uint32_t>(b.data() + p);
    const size_t len = load_le<uint64_t>(b.data() + p + 8);
    if (std::memcmp(&tag, "KVDT", 4) == 0 || std::memcmp(&tag, "LOGT", 4) == 0)
      out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(p + 16), b.begin() + static_cast<std::ptrdiff_t>(p + 24 + len));
    p += 24 + len;
  }
  return out;
}

struct Continuation {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
};

// Restores `file` into a fresh context with the given cache types, then continues greedily.
Continuation restore_and_continue(const std::string& file, DType tk, DType tv, int n) {
  ContextParams cp;
  cp.n_ctx = 256;
  cp.n_threads = 2;
  cp.type_k = tk;
  cp.type_v = tv;
  auto ctx = Context::create(stories(), cp);
  if (!ctx.is_ok()) throw std::runtime_error(ctx.status().to_string());
  auto r = state_load_seq_file((*ctx)->cache(), 0, stories().fingerprint(), file, {});
  if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
  const int32_t nv = static_cast<int32_t>(stories().hparams().n_vocab);
  Continuation c;
  std::vector<float> cur = r->logits;
  if (cur.size() != size_t(nv)) throw std::runtime_error("no logits in " + file);
  int32_t pos = static_cast<int32_t>(r->n_tokens);
  for (int i = 0; i < n; ++i) {
    const int32_t t = static_cast<int32_t>(std::max_element(cur.begin(), cur.end()) - cur.begin());
    c.tokens.push_back(t);
    auto x = (*ctx)->eval(0, &t, 1, pos++);
    if (!x.is_ok()) throw std::runtime_error(x.status().to_string());
    cur.assign(x.value(), x.value() + nv);
    c.logits.insert(c.logits.end(), cur.begin(), cur.end());
  }
  return c;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(StateCli, ConvertIsExactForF32AndMatchesTheInProcessConversion) {
  const std::string f16 = (dir_ / "f16.kvs").string(), f32 = (dir_ / "f32.kvs").string(), back = (dir_ / "back.kvs").string(),
                    mix = (dir_ / "mix.kvs").string();
  ASSERT_EQ(generate(kLong, f16).code, 0);

  const Proc c1 = run("state convert " + f16 + " -o " + f32 + " --cache-type-k f32 --cache-type-v f32");
  ASSERT_EQ(c1.code, 0) << c1.err;
  EXPECT_TRUE(has(c1.out, "converted")) << c1.out;
  EXPECT_TRUE(has(c1.out, "K f16 -> f32")) << c1.out;
  const Proc v = run("state inspect " + f32);
  ASSERT_EQ(v.code, 0) << v.err;
  EXPECT_TRUE(has(v.out, "K f32[32]")) << v.out;
  EXPECT_TRUE(has(v.out, "V f32[32]")) << v.out;

  // f16 -> f32 loses nothing: converting back gives the original rows and logits bit for bit.
  const Proc c2 = run("state convert " + f32 + " -o " + back + " --cache-type-k f16 --cache-type-v f16 --no-fsync");
  ASSERT_EQ(c2.code, 0) << c2.err;
  EXPECT_TRUE(kv_and_logits(bytes_of(back)) == kv_and_logits(bytes_of(f16)));
  EXPECT_GT(kv_and_logits(bytes_of(f16)).size(), 10000u);

  // The converted file continues like the original, and exactly like the original converted
  // while restoring into an f32 cache.
  const Continuation orig = restore_and_continue(f16, DType::F16, DType::F16, 8);
  const Continuation conv = restore_and_continue(f32, DType::F32, DType::F32, 8);
  const Continuation inproc = restore_and_continue(f16, DType::F32, DType::F32, 8);
  EXPECT_EQ(conv.tokens, orig.tokens);
  EXPECT_TRUE(same_bits(conv.logits, inproc.logits));

  // A lossy mix (K f32, V bf16): the CLI's conversion equals the in-process one exactly.
  const Proc c3 = run("state convert " + f16 + " -o " + mix + " --cache-type-k f32 --cache-type-v bf16");
  ASSERT_EQ(c3.code, 0) << c3.err;
  EXPECT_TRUE(has(c3.out, "V f16 -> bf16")) << c3.out;
  EXPECT_TRUE(same_bits(restore_and_continue(mix, DType::F32, DType::BF16, 8).logits,
                        restore_and_continue(f16, DType::F32, DType::BF16, 8).logits));
  // Unknown types are refused.
  const Proc bad = run("state convert " + f16 + " -o " + (dir_ / "x.kvs").string() + " --cache-type-k f99");
  EXPECT_EQ(bad.code, 1);
  EXPECT_TRUE(has(bad.err, "unknown cache type 'f99'")) << bad.err;
  EXPECT_FALSE(fs::exists(dir_ / "x.kvs"));
}

// A file in format 1.0 (CELL, as kvstash wrote before 1.1) is inspected, verified and restored
// as before, and `state convert` rewrites it as 1.1 (CEL2) with the same rows and logits.
TEST_F(StateCli, AVersion10FileIsReadAndConvertRewritesItAs11) {
  const std::string f = (dir_ / "p.kvs").string(), v10 = (dir_ / "v10.kvs").string(), v11 = (dir_ / "v11.kvs").string();
  ASSERT_EQ(generate(kLong, f).code, 0);
  const uint64_t n = n_tokens(kLong);
  {
    ContextParams cp;
    cp.n_ctx = 256;
    cp.n_threads = 1;
    auto ctx = Context::create(stories(), cp);
    ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
    auto r = state_load_seq_file((*ctx)->cache(), 0, stories().fingerprint(), f, {});
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    StateSaveOptions o;
    o.format_minor = 0;
    o.durable = false;
    o.logits = r->logits.data();
    o.n_logits = static_cast<uint32_t>(r->logits.size());
    ASSERT_TRUE(state_save_seq_file((*ctx)->cache(), 0, stories().fingerprint(), v10, o).is_ok());
  }
  const Proc i10 = run("state inspect " + v10);
  ASSERT_EQ(i10.code, 0) << i10.err;
  EXPECT_TRUE(has(i10.out, "kvstash state 1.0, one sequence")) << i10.out;
  EXPECT_TRUE(has(i10.out, "cells:      CELL (format 1.0), 16 bytes per token")) << i10.out;
  EXPECT_EQ(run("state verify " + v10).code, 0);
  const Proc c = run("state convert " + v10 + " -o " + v11 + " --no-fsync");
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_TRUE(has(c.out, "unchanged")) << c.out;
  const Proc i11 = run("state inspect " + v11);
  ASSERT_EQ(i11.code, 0) << i11.err;
  EXPECT_TRUE(has(i11.out, "kvstash state 1.1, one sequence")) << i11.out;
  EXPECT_TRUE(has(i11.out, "cells:      CEL2, 1 run of consecutive positions")) << i11.out;
  EXPECT_TRUE(kv_and_logits(bytes_of(v11)) == kv_and_logits(bytes_of(v10)));
  // §7: only the cells section differs: 4 + 16 n bytes against 8 + 16 (one run) + 4 n.
  EXPECT_EQ(bytes_of(v10).size() - bytes_of(v11).size(), (4 + 16 * n) - (8 + 16 + 4 * n));
  // Both continue exactly like the file the CLI wrote.
  const Continuation orig = restore_and_continue(f, DType::F16, DType::F16, 4);
  EXPECT_TRUE(same_bits(restore_and_continue(v10, DType::F16, DType::F16, 4).logits, orig.logits));
  EXPECT_TRUE(same_bits(restore_and_continue(v11, DType::F16, DType::F16, 4).logits, orig.logits));
}

}  // namespace
}  // namespace kvstash
