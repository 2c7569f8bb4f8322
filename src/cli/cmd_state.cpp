// `kvstash state inspect|verify|convert FILE`: look into, check and rewrite state files.
#include <cstdio>
#include <ctime>

#include "cli/commands.h"
#include "model/model.h"
#include "state/state.h"

namespace kvstash::cli {

void add_state_command(CLI::App& app, StateOptions& o) {
  auto* c = app.add_subcommand("state", "Inspect, verify or convert KV state files");
  c->require_subcommand(1);
  auto* ins = c->add_subcommand("inspect", "Print the header, model binding, layout and tokens of a state file");
  ins->add_option("file", o.file, "State file")->required();
  ins->add_option("-m,--model", o.model, "Model: also print the tokens as text and check the binding");
  auto* ver = c->add_subcommand("verify", "Check every checksum, and the model binding when a model is given");
  ver->add_option("file", o.file, "State file")->required();
  ver->add_option("-m,--model", o.model, "Model to check the binding against");
  auto* conv = c->add_subcommand("convert", "Rewrite a state file with other cache element types");
  conv->add_option("file", o.file, "State file")->required();
  conv->add_option("-o,--output", o.out, "Output file")->required();
  conv->add_option("--cache-type-k", o.type_k, "New K type (-ctk); default: unchanged");
  conv->add_option("--cache-type-v", o.type_v, "New V type (-ctv); default: unchanged");
  conv->add_flag("--no-fsync", o.no_fsync, "Skip fsync (the write stays atomic)");
  o.sub_inspect = ins;
  o.sub_verify = ver;
  o.sub_convert = conv;
}

namespace {

int fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
  return 1;
}

std::string hex(uint64_t v) {
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

void print_info(const StateInfo& in, const Model* model) {
  std::printf("format:     kvstash state %u.%u, %s\n", in.major, in.minor, in.kind == StateKind::Sequence ? "one sequence" : "whole context");
  std::printf("file:       %llu bytes (%llu bytes of KV rows, %.4f%% overhead)\n", static_cast<unsigned long long>(in.file_bytes),
              static_cast<unsigned long long>(in.kv_bytes), in.kv_bytes ? 100.0 * (in.file_bytes - in.kv_bytes) / in.kv_bytes : 0.0);
  const time_t secs = static_cast<time_t>(in.created_ms / 1000);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&secs));
  std::printf("created:    %s by %s\n", when, in.writer.c_str());
  std::printf("model:      %s '%s', n_vocab %u\n", in.model.arch.c_str(), in.model.name.c_str(), in.model.n_vocab);
  std::printf("            hparams %s tokenizer %s tensors %s weights %s\n", hex(in.model.hparams_hash).c_str(),
              hex(in.model.tokenizer_hash).c_str(), hex(in.model.tensors_hash).c_str(), hex(in.model.weights_hash).c_str());
  std::printf("context:    saved from n_ctx %u%s\n", in.n_ctx,
              in.kind == StateKind::Sequence ? (", sequence " + std::to_string(in.saved_seq)).c_str() : "");
  std::printf("tokens:     %u", in.layout.n_cells());
  if (!in.cell_pos.empty()) std::printf(" (positions %d..%d)", in.cell_pos.front(), in.cell_pos.back());
  std::printf("%s\n", in.n_logits ? ", with last-position logits" : "");
  if (in.cells_tag == "CEL2")
    std::printf("cells:      CEL2, %u run%s of consecutive positions + 4 bytes per token\n", in.n_cell_runs, in.n_cell_runs == 1 ? "" : "s");
  else
    std::printf("cells:      CELL (format 1.0), 16 bytes per token; `state convert` rewrites it as 1.1\n");
  std::printf("layout:     %u layers\n", in.layout.n_layers());
  for (uint32_t il = 0; il < in.layout.n_layers(); ++il) {
    if (il >= 2 && il + 1 < in.layout.n_layers()) {
      if (il == 2) std::printf("  ...\n");
      continue;
    }
    std::printf("  layer %-3u", il);
    for (const auto& s : in.layout.layer(il).streams)
      std::printf("  %s %s[%u] x%u groups, %zu B/row", kv_stream_name(s.stream), dtype_name(s.dtype), s.elems_per_row, s.n_groups, s.row_bytes);
    std::printf("\n");
  }
  for (const auto& u : in.unknown_sections) std::printf("skipped optional section '%s'\n", u.c_str());
  if (model) {
    std::string text;
    for (int32_t t : in.cell_token)
      if (t >= 0) text += model->vocab().token_to_piece(t, true);
    std::printf("text:       %s\n", text.c_str());
  }
}

Status check_binding(const StateInfo& in, const Model& m) {
  const ModelFingerprint& live = m.fingerprint();
  auto cmp = [](const char* what, uint64_t a, uint64_t b) {
    return a == b ? Status::ok() : invalid_argument(std::string("the file belongs to another model: ") + what + " hash differs");
  };
  if (in.model.arch != live.arch) return invalid_argument("the file belongs to architecture '" + in.model.arch + "'");
  KV_RETURN_IF_ERROR(cmp("hyperparameters", in.model.hparams_hash, live.hparams_hash));
  KV_RETURN_IF_ERROR(cmp("tokenizer", in.model.tokenizer_hash, live.tokenizer_hash));
  KV_RETURN_IF_ERROR(cmp("tensor directory", in.model.tensors_hash, live.tensors_hash));
  KV_RETURN_IF_ERROR(cmp("weights", in.model.weights_hash, live.weights_hash));
  if (in.model.n_vocab != live.n_vocab)
    return invalid_argument("the file was saved with a vocabulary of " + std::to_string(in.model.n_vocab) + ", the model has " + std::to_string(live.n_vocab));
  return Status::ok();
}

}  // namespace

int state_command(const StateOptions& o) {
  auto src = FdSource::open(default_file_io(), o.file);
  if (!src.is_ok()) return fail(src.status());
  auto info = state_inspect(*src);
  if (!info.is_ok()) return fail(info.status());
  std::unique_ptr<Model> model;
  if (!o.model.empty()) {
    auto m = Model::load(o.model);
    if (!m.is_ok()) return fail(m.status());
    model = std::move(m).value();
  }
  if (o.sub_inspect->parsed()) {
    print_info(*info, model.get());
    if (model) {
      Status s = check_binding(*info, *model);
      std::printf("binding:    %s\n", s.is_ok() ? "matches the model" : s.message().c_str());
    }
    return 0;
  }
  if (o.sub_verify->parsed()) {
    if (model) {
      Status s = check_binding(*info, *model);
      if (!s.is_ok()) return fail(s);
    }
    std::printf("%s: OK (%u tokens, %llu bytes, every checksum verified%s)\n", o.file.c_str(), info->layout.n_cells(),
                static_cast<unsigned long long>(info->file_bytes), model ? ", bound to this model" : "");
    return 0;
  }
  // convert: restore into a cache of the new layout, then write it out again.
  std::vector<std::vector<KvLayout::StreamRequest>> req(info->layout.n_layers());
  for (uint32_t il = 0; il < info->layout.n_layers(); ++il)
    for (const auto& s : info->layout.layer(il).streams) {
      DType t = s.dtype;
      const std::string& want = s.stream == KvStream::V ? o.type_v : o.type_k;
      if (!want.empty()) {
        auto d = dtype_from_name(want);
        if (!d) return fail(invalid_argument("state convert: unknown cache type '" + want + "'"));
        t = *d;
      }
      req[il].push_back({s.stream, t, s.elems_per_row, s.n_groups});
    }
  KvLayout layout;
  if (std::string err = KvLayout::make(std::max<uint32_t>(1, info->layout.n_cells()), req, &layout); !err.empty())
    return fail(invalid_argument("state convert: " + err));
  KvCache cache(std::move(layout));
  StateLoadOptions lo;
  const SeqId seq = info->kind == StateKind::Sequence ? info->saved_seq : -1;
  auto loaded = info->kind == StateKind::Sequence ? state_read_seq(cache, seq, info->model, *src, lo) : state_read_all(cache, info->model, *src, lo);
  if (!loaded.is_ok()) return fail(loaded.status());
  StateSaveOptions so;
  so.durable = !o.no_fsync;
  so.created_ms = info->created_ms;
  if (!loaded->logits.empty()) {
    so.logits = loaded->logits.data();
    so.n_logits = static_cast<uint32_t>(loaded->logits.size());
  }
  auto saved = info->kind == StateKind::Sequence ? state_save_seq_file(cache, seq, info->model, o.out, so) : state_save_all_file(cache, info->model, o.out, so);
  if (!saved.is_ok()) return fail(saved.status());
  std::printf("%s -> %s: %u tokens, %llu bytes%s%s\n", o.file.c_str(), o.out.c_str(), saved->n_tokens, static_cast<unsigned long long>(saved->n_bytes),
              loaded->converted ? ", converted " : ", unchanged", loaded->conversion.c_str());
  return 0;
}

}  // namespace kvstash::cli
