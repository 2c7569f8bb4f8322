// kvstash command-line entry: dispatches subcommands. The only place that calls exit codes.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"

int main(int argc, char** argv) {
  // llama.cpp spells some long options with one dash (-ctk, -ub, -np); CLI11 wants two.
  std::vector<std::string> args(argv, argv + argc);
  args = kvstash::cli::normalize_llama_flags(args);
  std::vector<char*> av;
  for (auto& a : args) av.push_back(a.data());

  CLI::App app{"kvstash: a CPU LLM inference engine with a persistent, portable KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kvstash ") + KVSTASH_VERSION + " (" + KVSTASH_COMMIT + ")");
  kvstash::cli::RunOptions run;
  kvstash::cli::GgufOptions gguf;
  kvstash::cli::MkmodelOptions mk;
  kvstash::cli::StateOptions st;
  kvstash::cli::BenchOptions bn;
  kvstash::cli::ServeOptions sv;
  kvstash::cli::BenchSlotsOptions bs;
  kvstash::cli::add_run_command(app, run);
  kvstash::cli::add_gguf_command(app, gguf);
  kvstash::cli::add_mkmodel_command(app, mk);
  kvstash::cli::add_state_command(app, st);
  kvstash::cli::add_bench_command(app, bn);
  kvstash::cli::add_serve_command(app, sv);
  kvstash::cli::add_bench_slots_command(app, bs);
  try {
    app.parse(static_cast<int>(av.size()), av.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (app.got_subcommand("run")) return kvstash::cli::run_command(run);
  if (app.got_subcommand("gguf")) return kvstash::cli::gguf_command(gguf);
  if (app.got_subcommand("mkmodel")) return kvstash::cli::mkmodel_command(mk);
  if (app.got_subcommand("state")) return kvstash::cli::state_command(st);
  if (app.got_subcommand("bench")) return kvstash::cli::bench_command(bn);
  if (app.got_subcommand("serve")) return kvstash::cli::serve_command(sv);
  if (app.got_subcommand("bench-slots")) return kvstash::cli::bench_slots_command(bs);
  return 2;
}
