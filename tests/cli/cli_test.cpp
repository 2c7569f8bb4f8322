// The kvstash binary end to end: exit codes and messages for malformed GGUF files (run under
// the sanitizers in the ASan build), `gguf`, `mkmodel` and `run`.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/le.h"
#include "gguf/gguf_writer.h"
#include "cli_runner.h"
#include "test_paths.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;

using test::Proc;
using test::slurp;


class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvstash_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Proc run(const std::string& args) { return test::run_kvstash(dir_, args); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) {
    const fs::path p = dir_ / name;
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return p.string();
  }
  fs::path dir_;
};

std::vector<uint8_t> small_gguf() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_tensor("a.weight", DType::F32, {8, 2}, [](uint8_t* d, uint64_t n) { std::memset(d, 0, n); });
  w.add_tensor("b.weight", DType::F32, {8}, [](uint8_t* d, uint64_t n) { std::memset(d, 0, n); });
  return w.to_bytes();
}

TEST_F(Cli, GgufPrintsMetadataAndTensorTable) {
  Proc p = run("gguf " + test::model_path("stories260K.gguf"));
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_NE(p.out.find("GGUF v3, 19 metadata keys, 48 tensors"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("llama.embedding_length"), std::string::npos);
  EXPECT_NE(p.out.find("token_embd.weight"), std::string::npos);
  EXPECT_NE(p.out.find("[64, 512]"), std::string::npos);
}

TEST_F(Cli, MalformedGgufFilesAreRefusedWithMessageAndExitCode) {
  const std::vector<uint8_t> good = small_gguf();
  struct Case {
    std::string name;
    std::vector<uint8_t> bytes;
    std::string expect;  // fragment of the error message
  };
  std::vector<Case> cases;
  cases.push_back({"empty", {}, "too short for the magic"});
  {
    auto b = good;
    b[0] = 'X';
    cases.push_back({"badmagic", b, "bad magic"});
  }
  cases.push_back({"truncated", std::vector<uint8_t>(good.begin(), good.begin() + 40), "cannot fit in the 16 bytes left"});
  {
    auto b = good;
    store_le<uint64_t>(b.data() + 24, UINT64_MAX);  // length of the first key
    cases.push_back({"hugekey", b, "string length"});
  }
  {
    auto b = good;
    store_le<uint64_t>(b.data() + 8, uint64_t(1) << 60);  // tensor count
    cases.push_back({"hugecount", b, "tensor count"});
  }
  {
    auto b = good;
    b.resize(b.size() - 16);  // tensor data cut short
    cases.push_back({"datapastend", b, "b.weight"});
  }
  for (const auto& c : cases) {
    const std::string path = write(c.name + ".gguf", c.bytes);
    for (const std::string cmd : {"gguf ", "run -n 1 -p x -m "}) {
      Proc p = run(cmd + path);
      EXPECT_EQ(p.code, 1) << c.name << ": " << cmd << "\n" << p.err;
      EXPECT_NE(p.err.find("error:"), std::string::npos) << c.name;
      EXPECT_NE(p.err.find(c.expect), std::string::npos) << c.name << " stderr: " << p.err;
    }
  }
  Proc p = run("gguf " + (dir_ / "does-not-exist.gguf").string());
  EXPECT_EQ(p.code, 1);
  EXPECT_NE(p.err.find("cannot open"), std::string::npos);
}

TEST_F(Cli, RunGreedyMatchesReference) {
  std::ifstream f(test::reference_dir() + "/stories260K-greedy.json");
  const auto ref = nlohmann::json::parse(f);
  const auto& p0 = ref["prompts"][1];
  const fs::path ids = dir_ / "ids.json";
  Proc p = run("run -m " + test::model_path("stories260K.gguf") + " -p \"" + p0["prompt"].get<std::string>() +
               "\" -n 64 --temp 0 -t 2 --token-ids-out " + ids.string());
  ASSERT_EQ(p.code, 0) << p.err;
  const auto got = nlohmann::json::parse(slurp(ids));
  EXPECT_EQ(got["prompt_token_ids"], p0["prompt_token_ids"]);
  EXPECT_EQ(got["generated_token_ids"], p0["generated_token_ids"]);
  EXPECT_EQ(p.out, p0["prompt"].get<std::string>() + p0["generated_text"].get<std::string>() + "\n");
  EXPECT_NE(p.err.find("tok/s"), std::string::npos);
}

TEST_F(Cli, MkmodelWritesLoadableModelsOfEveryType) {
  for (const std::string type : {"f32", "f16", "bf16", "q8_0", "q4_0"}) {
    const fs::path m = dir_ / ("tiny-" + type + ".gguf");
    Proc p = run("mkmodel --preset tiny-llama --n-layer 2 --type " + type + " --vocab " + test::model_path("ggml-vocab-llama-spm.gguf") + " -o " + m.string());
    ASSERT_EQ(p.code, 0) << p.err;
    Proc g = run("gguf " + m.string());
    ASSERT_EQ(g.code, 0) << g.err;
    EXPECT_NE(g.out.find("blk.1.ffn_down.weight"), std::string::npos);
    EXPECT_NE(g.out.find(" " + type + " "), std::string::npos) << g.out;
    const fs::path ids = dir_ / "ids.json";
    Proc r = run("run -m " + m.string() + " -p \"Hello world\" -n 8 --temp 0 --ignore-eos -t 2 --token-ids-out " + ids.string());
    ASSERT_EQ(r.code, 0) << r.err;
    const auto got = nlohmann::json::parse(slurp(ids));
    EXPECT_EQ(got["generated_token_ids"].size(), 8u);
    // A fixed seed gives the same file.
    const fs::path m2 = dir_ / ("tiny2-" + type + ".gguf");
    ASSERT_EQ(run("mkmodel --preset tiny-llama --n-layer 2 --type " + type + " --vocab " + test::model_path("ggml-vocab-llama-spm.gguf") + " -o " + m2.string()).code, 0);
    EXPECT_EQ(slurp(m), slurp(m2));
  }
  Proc bad = run("mkmodel --preset nope --vocab x -o y");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("unknown preset 'nope'"), std::string::npos);
}

// issue 4: a deepseek2 preset with the deepseek-llm vocabulary runs on both MLA paths; with f32
// weights and cache both paths pick the same greedy tokens; bench accepts the MLA paths.
TEST_F(Cli, MkmodelDeepseek2RunsOnBothMlaPaths) {
  const fs::path m = dir_ / "tiny-ds2.gguf";
  Proc p = run("mkmodel --preset tiny-deepseek2 --n-layer 2 --type f32 --vocab " + test::model_path("ggml-vocab-deepseek-llm.gguf") + " -o " + m.string());
  ASSERT_EQ(p.code, 0) << p.err;
  Proc g = run("gguf " + m.string());
  ASSERT_EQ(g.code, 0) << g.err;
  for (const char* t : {"blk.0.attn_kv_a_mqa.weight", "blk.0.attn_kv_b.weight", "blk.0.attn_q_a.weight", "blk.1.ffn_gate_exps.weight",
                        "blk.1.ffn_down_shexp.weight", "deepseek2.attention.kv_lora_rank", "deepseek2.rope.scaling.type"})
    EXPECT_NE(g.out.find(t), std::string::npos) << t;
  nlohmann::json ids[2];
  int i = 0;
  for (const std::string path : {"absorbed", "naive"}) {
    const fs::path out = dir_ / ("ids-" + path + ".json");
    Proc r = run("run -m " + m.string() + " -p \"Hello world\" -n 8 --temp 0 --ignore-eos -t 2 -ctk f32 --mla-path " + path +
                 " --token-ids-out " + out.string());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("MLA path " + path), std::string::npos) << r.err;
    ids[i++] = nlohmann::json::parse(slurp(out));
  }
  EXPECT_EQ(ids[0]["generated_token_ids"].size(), 8u);
  EXPECT_EQ(ids[0]["generated_token_ids"], ids[1]["generated_token_ids"]);
  EXPECT_NE(run("run -m " + m.string() + " -p hi -n 1 --mla-path sideways").code, 0);
  Proc b = run("bench -m " + m.string() + " -p 8 -n 4 -r 1 -t 2 --attn naive --no-roof");
  EXPECT_EQ(b.code, 0) << b.err;
}

// issue 7: decode reports its share of the read bandwidth measured right before each
// repetition: per repetition 100 x (tok/s x weight bytes per token) / roof, then the mean.
TEST_F(Cli, BenchPairsDecodeWithTheReadRoof) {
  const std::string m = test::model_path("stories260K.gguf");
  Proc b = run("bench -m " + m + " -p 0 -n 4 -r 3 -t 2 --roof-mib 16 -o json");
  ASSERT_EQ(b.code, 0) << b.err;
  const auto j = nlohmann::json::parse(b.out);
  ASSERT_EQ(j.size(), 1u);
  const auto& r = j[0];
  ASSERT_EQ(r["samples_mem_read_GBps"].size(), 3u);
  ASSERT_EQ(r["samples_ts"].size(), 3u);
  const double bytes_per_token = r["decode_GBps"].get<double>() * 1e9 / r["avg_ts"].get<double>();
  double pct = 0, roof = 0;
  for (int i = 0; i < 3; ++i) {
    const double gbps = r["samples_mem_read_GBps"][i].get<double>();
    EXPECT_GT(gbps, 0.0);
    roof += gbps / 3;
    pct += 100.0 * r["samples_ts"][i].get<double>() * bytes_per_token / (gbps * 1e9) / 3;
  }
  EXPECT_NEAR(r["mem_read_GBps"].get<double>(), roof, 1e-9 * roof);
  EXPECT_NEAR(r["decode_roof_pct"].get<double>(), pct, 1e-9 * pct);
  Proc md = run("bench -m " + m + " -p 4 -n 4 -r 1 -t 1 --roof-mib 16");
  ASSERT_EQ(md.code, 0) << md.err;
  EXPECT_NE(md.out.find("| roof GB/s | % roof |"), std::string::npos) << md.out;
  Proc off = run("bench -m " + m + " -p 0 -n 4 -r 1 -t 1 --no-roof -o json");
  ASSERT_EQ(off.code, 0) << off.err;
  EXPECT_FALSE(nlohmann::json::parse(off.out)[0].contains("mem_read_GBps"));
}

}  // namespace
}  // namespace kvstash
