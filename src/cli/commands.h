// Subcommands of the kvstash CLI: option structs, registration with CLI11, and bodies.
// Bodies return a process exit code and print errors to stderr; they never throw.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "server/server_options.h"

namespace kvstash::cli {

std::vector<std::string> normalize_llama_flags(const std::vector<std::string>& args);

struct RunOptions {
  std::string model;
  std::string prompt;
  int32_t n_predict = 128;
  int n_threads = 0;
  uint32_t n_ctx = 0;
  int32_t n_batch = 2048;
  int32_t n_ubatch = 512;
  std::string cache_type_k = "f16";
  std::string cache_type_v = "f16";
  float temperature = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  uint64_t seed = 0xFFFFFFFFull;
  bool ignore_eos = false;
  bool no_display_prompt = false;
  std::string token_ids_out;  // write prompt and generated token ids as JSON here
  std::string prompt_cache;   // --prompt-cache FILE
  bool prompt_cache_no_fsync = false;
  std::string mla_path = "absorbed";  // --mla-path (MLA models): absorbed | naive
};
void add_run_command(CLI::App& app, RunOptions& o);
int run_command(const RunOptions& o);

struct GgufOptions {
  std::string file;
  bool all_values = false;
};
void add_gguf_command(CLI::App& app, GgufOptions& o);
int gguf_command(const GgufOptions& o);

struct StateOptions {
  std::string file, model, out, type_k, type_v;
  bool no_fsync = false;
  CLI::App* sub_inspect = nullptr;
  CLI::App* sub_verify = nullptr;
  CLI::App* sub_convert = nullptr;
};
void add_state_command(CLI::App& app, StateOptions& o);
int state_command(const StateOptions& o);

struct BenchOptions {
  std::vector<std::string> models;
  std::vector<int> n_prompt{512};
  std::vector<int> n_gen{128};
  std::vector<int> threads{0};
  int reps = 5;
  int32_t n_batch = 2048;
  int32_t n_ubatch = 512;
  std::string type_k = "f16", type_v = "f16";
  std::string attn = "default";
  std::string format = "md";
  bool roof = true;     // decode: measure the memory read bandwidth before each repetition (--no-roof)
  int roof_mib = 1024;  // the probe's buffer
};
void add_bench_command(CLI::App& app, BenchOptions& o);
int bench_command(const BenchOptions& o);

struct MkmodelOptions {
  std::string preset = "tiny-llama";
  std::string arch;  // empty: the preset's
  std::string type = "f32";
  std::string vocab;
  std::string out;
  uint64_t seed = 1;
  uint32_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0, n_ctx_train = 0, n_rot = 0;
  bool tied = false;
  bool list = false;
  bool mla_split = false;  // deepseek2: write attn_k_b / attn_v_b instead of attn_kv_b
};
void add_mkmodel_command(CLI::App& app, MkmodelOptions& o);
int mkmodel_command(const MkmodelOptions& o);

struct ServeOptions {
  ServerOptions server;
  std::string api_key;       // --api-key: comma list (else $LLAMA_API_KEY)
  std::string api_key_file;  // --api-key-file
  bool slots_flag = false;   // --slots: accepted for llama-server compatibility (the default)
};
void add_serve_command(CLI::App& app, ServeOptions& o);
int serve_command(ServeOptions& o);

// `kvstash bench-slots`: aggregate generation throughput of the slot scheduler, 1 slot vs N.
struct BenchSlotsOptions {
  std::string model;
  std::vector<int> parallel{1, 4};
  int n_clients = 8;
  int n_prompt = 32;
  int n_gen = 128;
  uint32_t n_ctx = 0;
  int n_threads = 0;
  int reps = 3;
};
void add_bench_slots_command(CLI::App& app, BenchSlotsOptions& o);
int bench_slots_command(const BenchSlotsOptions& o);

}  // namespace kvstash::cli
