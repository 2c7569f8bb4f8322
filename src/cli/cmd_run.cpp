// `kvstash run`: generate text from a prompt, streaming to stdout, speeds to stderr.
#include <chrono>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include <filesystem>
#include "engine/context.h"
#include "engine/sampler.h"
#include "model/model.h"

namespace kvstash::cli {

void add_run_command(CLI::App& app, RunOptions& o) {
  auto* c = app.add_subcommand("run", "Generate text from a prompt");
  c->add_option("-m,--model", o.model, "GGUF model file")->required();
  c->add_option("-p,--prompt", o.prompt, "Prompt text");
  c->add_option("-n,--n-predict", o.n_predict, "Tokens to generate (-1 = until EOS or the context is full)");
  c->add_option("-t,--threads", o.n_threads, "Threads (default: all CPUs)");
  c->add_option("-c,--ctx-size", o.n_ctx, "Context size in tokens (default: min(training context, 4096))");
  c->add_option("-b,--batch-size", o.n_batch, "Logical batch size");
  c->add_option("--ubatch-size", o.n_ubatch, "Physical batch size (-ub)");
  c->add_option("--cache-type-k", o.cache_type_k, "K cache type (-ctk): f32, f16, bf16, q8_0, q4_0, q8_KV");
  c->add_option("--cache-type-v", o.cache_type_v, "V cache type (-ctv): f32, f16, bf16, q8_0, q4_0, q8_KV");
  c->add_option("--temp", o.temperature, "Temperature (0 = greedy)");
  c->add_option("--top-k", o.top_k, "Top-k (0 = off)");
  c->add_option("--top-p", o.top_p, "Top-p (1 = off)");
  c->add_option("--min-p", o.min_p, "Min-p (0 = off)");
  c->add_option("--repeat-penalty", o.repeat_penalty, "Repetition penalty (1 = off)");
  c->add_option("--repeat-last-n", o.repeat_last_n, "Tokens the repetition penalty looks back over");
  c->add_option("-s,--seed", o.seed, "RNG seed (default: random)");
  c->add_flag("--ignore-eos", o.ignore_eos, "Keep generating after end-of-sequence tokens");
  c->add_flag("--no-display-prompt", o.no_display_prompt, "Do not echo the prompt");
  c->add_option("--token-ids-out", o.token_ids_out, "Write prompt and generated token ids as JSON to this file");
  c->add_option("--prompt-cache", o.prompt_cache,
                "State file: restore the longest matching prefix from it, and save the prompt's state to it");
  c->add_flag("--prompt-cache-no-fsync", o.prompt_cache_no_fsync, "Save the prompt cache without fsync (still atomic)");
  c->add_option("--mla-path", o.mla_path, "MLA attention path (deepseek2): absorbed (default) or naive")
      ->check(CLI::IsMember({"absorbed", "naive"}));
}

namespace {
int fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
  return 1;
}
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int run_command(const RunOptions& o) {
  auto tk = dtype_from_name(o.cache_type_k), tv = dtype_from_name(o.cache_type_v);
  if (!tk || !tv) return fail(invalid_argument("run: unknown cache type '" + (tk ? o.cache_type_v : o.cache_type_k) + "'"));
  const auto t_load = std::chrono::steady_clock::now();
  auto model = Model::load(o.model);
  if (!model.is_ok()) return fail(model.status());
  const Model& m = **model;
  ContextParams cp;
  cp.n_ctx = o.n_ctx;
  cp.n_batch = o.n_batch;
  cp.n_ubatch = o.n_ubatch;
  cp.n_threads = o.n_threads;
  cp.type_k = *tk;
  cp.type_v = *tv;
  cp.mla_path = o.mla_path == "naive" ? MlaPath::Naive : MlaPath::Absorbed;
  auto ctx_r = Context::create(m, cp);
  if (!ctx_r.is_ok()) return fail(ctx_r.status());
  Context& ctx = **ctx_r;
  std::fprintf(stderr, "model: %s (%s), %.2f M params, %.2f MB, loaded in %.0f ms; kernels %s, %d threads, n_ctx %u%s%s\n",
               m.name().c_str(), arch_name(m.arch()), m.n_params() / 1e6, m.weight_bytes() / 1e6, ms_since(t_load),
               ctx.kernels().name, ctx.pool().n_threads(), ctx.params().n_ctx, m.arch() == Arch::Deepseek2 ? ", MLA path " : "",
               m.arch() == Arch::Deepseek2 ? mla_path_name(cp.mla_path) : "");

  SamplerParams sp;
  sp.temperature = o.temperature;
  sp.top_k = o.top_k;
  sp.top_p = o.top_p;
  sp.min_p = o.min_p;
  sp.repeat_penalty = o.repeat_penalty;
  sp.repeat_last_n = o.repeat_last_n;
  sp.seed = o.seed;
  if (Status st = validate(sp); !st.is_ok()) return fail(st);
  Sampler sampler(sp, static_cast<int32_t>(m.hparams().n_vocab));

  const Vocab& vocab = m.vocab();
  std::vector<int32_t> prompt = vocab.tokenize(o.prompt, /*add_special=*/true);
  if (prompt.empty()) return fail(invalid_argument("run: the prompt is empty and the vocabulary adds no BOS token"));
  const int32_t n_ctx = static_cast<int32_t>(ctx.params().n_ctx);
  if (static_cast<int32_t>(prompt.size()) >= n_ctx)
    return fail(invalid_argument("run: prompt of " + std::to_string(prompt.size()) + " tokens does not fit the context of " + std::to_string(n_ctx)));
  if (!o.no_display_prompt) {
    std::fputs(o.prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  for (int32_t t : prompt) sampler.accept(t);

  // --prompt-cache: restore the longest common prefix instead of recomputing it.
  int32_t n_reused = 0;
  std::vector<float> cached_logits;
  if (!o.prompt_cache.empty()) {
    // Temporary files left by writers that died mid-save (docs/state-format.md §6).
    const auto dir = std::filesystem::path(o.prompt_cache).parent_path();
    if (const int n = state_cleanup_temp_files(dir.empty() ? "." : dir.string()); n > 0)
      std::fprintf(stderr, "prompt cache: removed %d stale temporary file(s)\n", n);
  }
  if (!o.prompt_cache.empty() && std::filesystem::exists(o.prompt_cache)) {
    const auto t_rs = std::chrono::steady_clock::now();
    StateLoadOptions lo;
    lo.pool = &ctx.pool();
    auto r = state_load_seq_file(ctx.cache(), 0, m.fingerprint(), o.prompt_cache, lo);
    if (!r.is_ok()) {
      std::fprintf(stderr, "prompt cache: not used: %s\n", r.status().to_string().c_str());
    } else {
      const auto& cached = r->tokens;
      size_t p = 0;
      while (p < cached.size() && p < prompt.size() && cached[p] == prompt[p] && r->positions[p] == static_cast<int32_t>(p)) ++p;
      if (p == prompt.size() && cached.size() == prompt.size() && !r->logits.empty()) {
        cached_logits = r->logits;  // the whole prompt, with its last logits: nothing to compute
      } else if (p == prompt.size()) {
        --p;  // recompute the last token to get its logits
      }
      ctx.cache().seq_rm(0, static_cast<int32_t>(p), -1);
      n_reused = static_cast<int32_t>(p);
      std::fprintf(stderr, "prompt cache: restored %d of %zu cached tokens from %s in %.2f ms; computing %zu\n", n_reused, cached.size(),
                   o.prompt_cache.c_str(), ms_since(t_rs), prompt.size() - n_reused);
    }
  }

  const auto t_pp = std::chrono::steady_clock::now();
  const float* first_logits = nullptr;
  if (!cached_logits.empty()) {
    first_logits = cached_logits.data();
  } else {
    auto lg = ctx.eval(0, prompt.data() + n_reused, static_cast<int32_t>(prompt.size()) - n_reused, n_reused);
    if (!lg.is_ok()) return fail(lg.status());
    first_logits = lg.value();
  }
  const double pp_ms = ms_since(t_pp);
  if (!o.prompt_cache.empty() && cached_logits.empty()) {
    StateSaveOptions so;
    so.pool = &ctx.pool();
    so.durable = !o.prompt_cache_no_fsync;
    so.logits = first_logits;
    so.n_logits = m.hparams().n_vocab;
    const auto t_sv = std::chrono::steady_clock::now();
    auto sv = state_save_seq_file(ctx.cache(), 0, m.fingerprint(), o.prompt_cache, so);
    if (!sv.is_ok()) return fail(sv.status());
    std::fprintf(stderr, "prompt cache: saved %u tokens (%llu bytes) to %s in %.2f ms\n", sv->n_tokens,
                 static_cast<unsigned long long>(sv->n_bytes), o.prompt_cache.c_str(), ms_since(t_sv));
  }

  std::vector<int32_t> generated;
  int32_t pos = static_cast<int32_t>(prompt.size());
  const int32_t limit = o.n_predict < 0 ? n_ctx - pos : std::min(o.n_predict, n_ctx - pos);
  generated.reserve(std::max(limit, 0));
  const float* logits = first_logits;
  const auto t_tg = std::chrono::steady_clock::now();
  int32_t n_eval = 0;
  for (int32_t i = 0; i < limit; ++i) {
    const int32_t tok = sampler.sample(logits);
    sampler.accept(tok);
    generated.push_back(tok);
    if (!o.ignore_eos && vocab.is_eog(tok)) break;
    const std::string piece = vocab.token_to_piece(tok);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (i + 1 == limit || pos + 1 >= n_ctx) break;
    auto r = ctx.eval(0, &tok, 1, pos++);
    if (!r.is_ok()) return fail(r.status());
    logits = r.value();
    ++n_eval;
  }
  const double tg_ms = ms_since(t_tg);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const size_t n_computed = cached_logits.empty() ? prompt.size() - n_reused : 0;
  std::fprintf(stderr, "prompt:     %5zu tokens in %9.2f ms = %8.2f tok/s (%d restored from cache)\n", n_computed, pp_ms,
               n_computed ? n_computed * 1000.0 / pp_ms : 0.0, n_reused + (cached_logits.empty() ? 0 : static_cast<int32_t>(prompt.size()) - n_reused));
  std::fprintf(stderr, "generation: %5d tokens in %9.2f ms = %8.2f tok/s (%zu sampled)\n", n_eval, tg_ms,
               n_eval > 0 ? n_eval * 1000.0 / tg_ms : 0.0, generated.size());
  if (!o.token_ids_out.empty()) {
    nlohmann::json j;
    j["prompt_token_ids"] = prompt;
    j["generated_token_ids"] = generated;
    std::ofstream f(o.token_ids_out);
    f << j.dump() << "\n";
    if (!f) return fail(io_error("run: cannot write '" + o.token_ids_out + "'"));
  }
  return 0;
}

}  // namespace kvstash::cli
