// `kvstash mkmodel`: writes a random-weight GGUF model from a preset and overrides.
#include <cstdio>

#include "cli/commands.h"
#include "model/model_gen.h"

namespace kvstash::cli {

void add_mkmodel_command(CLI::App& app, MkmodelOptions& o) {
  auto* c = app.add_subcommand("mkmodel", "Write a random-weight GGUF model (llama.cpp names, pure quantization)");
  c->add_option("--preset", o.preset, "Shape preset: tiny-llama, tinyllama-1.1b, tiny-deepseek2, deepseek2-1.7b");
  c->add_option("--arch", o.arch, "Architecture (llama, deepseek2; default: the preset's)");
  c->add_option("--type", o.type, "Weight type of every matrix: f32, f16, bf16, q8_0, q4_0");
  c->add_option("--vocab", o.vocab, "Vocab-only GGUF to copy the tokenizer from")->required();
  c->add_option("-o,--output", o.out, "Output file")->required();
  c->add_option("--seed", o.seed, "Random seed");
  c->add_option("--n-embd", o.n_embd, "Override: embedding length");
  c->add_option("--n-layer", o.n_layer, "Override: layers");
  c->add_option("--n-head", o.n_head, "Override: attention heads");
  c->add_option("--n-head-kv", o.n_head_kv, "Override: KV heads");
  c->add_option("--n-ff", o.n_ff, "Override: feed-forward length");
  c->add_option("--n-ctx-train", o.n_ctx_train, "Override: training context length");
  c->add_option("--n-rot", o.n_rot, "Override: rope dimension count");
  c->add_flag("--tied", o.tied, "Tie the output matrix to the token embedding");
  c->add_flag("--mla-split", o.mla_split, "deepseek2: write split attn_k_b/attn_v_b (newer converters) instead of attn_kv_b");
}

int mkmodel_command(const MkmodelOptions& o) {
  auto spec = model_gen_preset(o.preset);
  if (!spec.is_ok()) {
    std::fprintf(stderr, "error: %s\n", spec.status().message().c_str());
    return 1;
  }
  ModelGenSpec s = spec.value();
  auto t = dtype_from_name(o.type);
  if (!t) {
    std::fprintf(stderr, "error: mkmodel: unknown type '%s' (f32, f16, bf16, q8_0, q4_0)\n", o.type.c_str());
    return 1;
  }
  if (!o.arch.empty()) s.arch = o.arch;
  s.mla_split = o.mla_split;
  s.type = *t;
  s.seed = o.seed;
  s.vocab_path = o.vocab;
  s.tied_output = o.tied;
  if (o.n_embd) s.n_embd = o.n_embd;
  if (o.n_layer) s.n_layer = o.n_layer;
  if (o.n_head) s.n_head = o.n_head;
  if (o.n_head_kv) s.n_head_kv = o.n_head_kv;
  if (o.n_ff) s.n_ff = o.n_ff;
  if (o.n_ctx_train) s.n_ctx_train = o.n_ctx_train;
  if (o.n_rot) s.n_rot = o.n_rot;
  Status st = model_gen_write(s, o.out);
  if (!st.is_ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  std::fprintf(stderr, "mkmodel: wrote %s (%s, %s, n_embd %u, %u layers, %u/%u heads, ffn %u)\n", o.out.c_str(), s.name.c_str(),
               dtype_name(s.type), s.n_embd, s.n_layer, s.n_head, s.n_head_kv, s.n_ff);
  return 0;
}

}  // namespace kvstash::cli
