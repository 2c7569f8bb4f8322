// Routes that describe the server: /health, /props, /v1/models, /metrics, and the tokenizer
// endpoints /tokenize and /detokenize.
#include <ctime>

#include "server/json_io.h"
#include "server/metrics.h"
#include "server/server_state.h"

namespace kvstash {
namespace {

using json = nlohmann::json;

void health(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  const int32_t idle = st.engine.scheduler->n_idle_slots();
  const int32_t busy = st.engine.scheduler->n_slots() - idle;
  if (idle == 0 && req.has_param("fail_on_no_slot")) {
    send_error(res, api_error(ErrorKind::Unavailable, "no slot available"));
    return;
  }
  json j = {{"status", "ok"}, {"slots_idle", idle}, {"slots_processing", busy}};
  if (req.has_param("include_slots")) {
    json slots = json::array();
    for (const auto& s : st.engine.scheduler->slots()) slots.push_back(slot_json(s));
    j["slots"] = std::move(slots);
  }
  send_json(res, j);
}

void props(ServerState& st, const httplib::Request&, httplib::Response& res) {
  const Model& m = *st.engine.model;
  const Vocab& v = m.vocab();
  GenRequest defaults;
  defaults.n_predict = st.opt.n_predict;
  const ChatTemplate& ct = st.engine.chat;
  json j = {
      {"default_generation_settings", {{"params", sampling_params_json(defaults, st.opt.seed, false)}, {"n_ctx", st.rctx.n_ctx_slot}}},
      {"total_slots", st.engine.scheduler->n_slots()},
      {"model_alias", st.resp.model},
      {"model_path", st.opt.model_path},
      {"modalities", {{"vision", false}, {"audio", false}, {"video", false}}},
      {"endpoint_slots", !st.opt.no_slots},
      {"endpoint_props", false},
      {"endpoint_metrics", st.opt.metrics},
      {"chat_template", ct.source()},
      {"chat_template_format", ct.format() ? json(chat_format_name(*ct.format())) : json(nullptr)},
      {"chat_template_status", ct.status_name()},
      {"chat_template_caps", json::object()},
      {"bos_token", v.bos_id() >= 0 ? v.token_text(v.bos_id()) : std::string()},
      {"eos_token", v.eos_id() >= 0 ? v.token_text(v.eos_id()) : std::string()},
      {"build_info", st.build_info},
      {"is_sleeping", false},
      {"slot_save_path", st.engine.slot_dir ? json(st.engine.slot_dir->path()) : json(nullptr)},
      {"cache_type_k", st.type_k},
      {"cache_type_v", st.type_v},
  };
  if (ct.status() == ChatTemplateStatus::Unrecognized)
    j["chat_template_error"] = "the model's chat template matches no built-in format; start the server with --chat-template NAME";
  send_json(res, j);
}

void models(ServerState& st, const httplib::Request&, httplib::Response& res) {
  const Model& m = *st.engine.model;
  const json meta = {
      {"vocab_type", 1},
      {"n_vocab", m.hparams().n_vocab},
      {"n_ctx_train", m.hparams().n_ctx_train},
      {"n_embd", m.hparams().n_embd},
      {"n_params", m.n_params()},
      {"size", m.weight_bytes()},
  };
  json model = {{"id", st.resp.model}, {"object", "model"}, {"created", st.start_unix}, {"owned_by", "kvstash"}, {"meta", meta}};
  json legacy = {{"name", st.resp.model}, {"model", st.resp.model}, {"modified_at", ""}, {"size", ""}, {"digest", ""},
                 {"type", "model"}, {"description", ""}, {"tags", json::array({""})}, {"capabilities", json::array({"completion"})},
                 {"parameters", ""}, {"details", {{"format", "gguf"}}}};
  send_json(res, {{"object", "list"}, {"data", json::array({model})}, {"models", json::array({legacy})}});
}

void metrics(ServerState& st, const httplib::Request&, httplib::Response& res) {
  if (!st.opt.metrics) {
    send_error(res, api_error(ErrorKind::NotSupported, "This server does not support metrics endpoint. Start it with `--metrics`"));
    return;
  }
  res.set_header("Process-Start-Time-Unix", std::to_string(st.start_unix));
  res.set_content(format_metrics(st.engine.scheduler->metrics(true)), "text/plain; version=0.0.4");
}

void tokenize(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_json_body(req.body);
  if (!body.is_ok()) return send_error(res, api_error(ErrorKind::InvalidRequest, body.status().message()));
  TokenizeRequest tr;
  if (auto e = parse_tokenize_request(*body, &tr)) return send_error(res, *e);
  const Vocab& v = *st.rctx.vocab;
  const std::vector<int32_t> ids = v.tokenize(tr.content, tr.add_special, tr.parse_special);
  json toks = json::array();
  for (int32_t id : ids) {
    if (!tr.with_pieces) {
      toks.push_back(id);
      continue;
    }
    const std::string piece = v.token_to_piece(id, true);
    json p;
    if (is_valid_utf8(piece)) {
      p = piece;
    } else {
      p = json::array();
      for (unsigned char c : piece) p.push_back(int(c));
    }
    toks.push_back({{"id", id}, {"piece", std::move(p)}});
  }
  send_json(res, {{"tokens", std::move(toks)}});
}

void detokenize(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_json_body(req.body);
  if (!body.is_ok()) return send_error(res, api_error(ErrorKind::InvalidRequest, body.status().message()));
  std::vector<int32_t> ids;
  if (auto e = parse_detokenize_request(*body, st.rctx.n_vocab, &ids)) return send_error(res, *e);
  // llama.cpp's tokens_to_str: the pieces (special tokens included), concatenated.
  std::string out;
  for (int32_t id : ids) out += st.rctx.vocab->token_to_piece(id, true);
  send_json(res, {{"content", out}});
}

}  // namespace

void add_info_routes(httplib::Server& svr, ServerState& st) {
  svr.Get("/health", guarded(st, health));
  svr.Get("/v1/health", guarded(st, health));
  svr.Get("/props", guarded(st, props));
  svr.Post("/props", guarded(st, [](ServerState&, const httplib::Request&, httplib::Response& res) {
             send_error(res, api_error(ErrorKind::NotSupported, "This server does not support changing global properties."));
           }));
  svr.Get("/models", guarded(st, models));
  svr.Get("/v1/models", guarded(st, models));
  svr.Get("/metrics", guarded(st, metrics));
  svr.Post("/tokenize", guarded(st, tokenize));
  svr.Post("/detokenize", guarded(st, detokenize));
  svr.Get("/", guarded(st, [](ServerState& s, const httplib::Request&, httplib::Response& res) {
            res.set_content(s.build_info + ": llama.cpp-compatible server. See docs/api.md.\n", "text/plain; charset=utf-8");
          }));
}

}  // namespace kvstash
