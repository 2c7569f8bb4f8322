// Slot routes: GET /slots, POST /slots/{id}?action=save|restore|erase, and the saved-state
// management of kvstash: GET /slots/saved, DELETE /slots/saved/{filename},
// POST /slots/saved/{filename}?action=rename. Filenames follow llama.cpp's rules and are
// confined to --slot-save-path (SlotDir); the work itself runs on the scheduler thread.
#include <charconv>
#include <sstream>

#include "server/json_io.h"
#include "server/server_state.h"

namespace kvstash {
namespace {

using json = nlohmann::json;

const char* kNoSlotPath = "This server does not support slots action. Start it with `--slot-save-path`";

void list_slots(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  if (st.opt.no_slots) return send_error(res, api_error(ErrorKind::NotSupported, "This server does not support slots endpoint (--no-slots)."));
  if (req.has_param("fail_on_no_slot") && st.engine.scheduler->n_idle_slots() == 0)
    return send_error(res, api_error(ErrorKind::Unavailable, "no slot available"));
  json arr = json::array();
  for (const auto& s : st.engine.scheduler->slots()) arr.push_back(slot_json(s));
  send_json(res, arr);
}

// llama.cpp parses the id with std::stoi and takes it modulo the slot count; a negative or
// non-numeric id is refused.
bool parse_slot_id(const std::string& s, int32_t n_slots, int32_t* out) {
  int64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < 0) return false;
  *out = static_cast<int32_t>(v % n_slots);
  return true;
}

void slot_action(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  if (!st.engine.slot_dir) return send_error(res, api_error(ErrorKind::NotSupported, kNoSlotPath));
  Scheduler& sched = *st.engine.scheduler;
  int32_t id = -1;
  if (!parse_slot_id(req.matches[1].str(), sched.n_slots(), &id)) return send_error(res, api_error(ErrorKind::InvalidRequest, "Invalid slot ID"));
  const std::string action = req.get_param_value("action");
  if (action == "erase") {
    const SlotActionResult r = sched.erase_slot(id);
    if (!r.status.is_ok()) return send_error(res, api_error(r.status));
    return send_json(res, {{"id_slot", id}, {"n_erased", r.n_tokens}});
  }
  if (action != "save" && action != "restore") return send_error(res, api_error(ErrorKind::InvalidRequest, "Invalid action"));
  auto body = parse_json_body(req.body);
  if (!body.is_ok()) return send_error(res, api_error(ErrorKind::InvalidRequest, body.status().message()));
  std::string filename;
  if (auto e = parse_required_string(*body, "filename", &filename)) return send_error(res, *e);
  auto path = st.engine.slot_dir->resolve(filename);
  if (!path.is_ok()) return send_error(res, api_error(ErrorKind::InvalidRequest, path.status().message()));
  if (action == "save") {
    const SlotActionResult r = sched.save_slot(id, *path);
    if (r.busy) return send_error(res, api_error(ErrorKind::Unavailable, r.status.message()));
    if (!r.status.is_ok())
      return send_error(res, api_error(r.status.code() == StatusCode::ResourceExhausted ? ErrorKind::InsufficientStorage : ErrorKind::Server,
                                       "Unable to save slot: " + r.status.message()));
    return send_json(res, {{"id_slot", id}, {"filename", filename}, {"n_saved", r.n_tokens}, {"n_written", r.n_bytes},
                           {"timings", {{"save_ms", r.ms}}}});
  }
  const SlotActionResult r = sched.restore_slot(id, *path);
  if (r.busy) return send_error(res, api_error(ErrorKind::Unavailable, r.status.message()));
  if (!r.status.is_ok())  // a file we cannot use is the client's problem; a failing disk is ours
    return send_error(res, api_error(r.status.code() == StatusCode::IO ? ErrorKind::Server : ErrorKind::InvalidRequest,
                                     "Unable to restore slot: " + r.status.message()));
  send_json(res, {{"id_slot", id}, {"filename", filename}, {"n_restored", r.n_tokens}, {"n_read", r.n_bytes},
                  {"timings", {{"restore_ms", r.ms}}}});
}

// The first words of a saved prompt (BOS and other control tokens are not text).
std::string prompt_preview(const Vocab& v, const std::vector<int32_t>& cell_pos, const std::vector<int32_t>& cell_token) {
  std::vector<std::pair<int32_t, int32_t>> by_pos;
  for (size_t i = 0; i < cell_pos.size() && i < cell_token.size(); ++i) by_pos.emplace_back(cell_pos[i], cell_token[i]);
  std::sort(by_pos.begin(), by_pos.end());
  std::vector<int32_t> ids;
  for (const auto& [p, t] : by_pos) {
    if (ids.size() >= 48) break;
    if (t >= 0 && t < v.n_tokens() && !v.is_control(t)) ids.push_back(t);
  }
  std::istringstream words(v.detokenize(ids, false));
  std::string w, out;
  for (int n = 0; n < 12 && words >> w; ++n) out += (out.empty() ? "" : " ") + w;
  return out;
}

const char* stream_dtype(const KvLayout& l, KvStream s) {
  if (l.n_layers() == 0) return "";
  const KvRowSpec* r = l.find(0, s);
  return r ? dtype_name(r->dtype) : "";
}

void list_saved(ServerState& st, const httplib::Request&, httplib::Response& res) {
  if (!st.engine.slot_dir) return send_error(res, api_error(ErrorKind::NotSupported, kNoSlotPath));
  const ModelFingerprint& live = st.engine.model->fingerprint();
  json arr = json::array();
  for (const auto& e : st.engine.slot_dir->list()) {
    json j = {{"filename", e.filename}, {"size_bytes", e.size_bytes}, {"mtime", e.mtime_s}, {"valid", e.valid}};
    if (!e.valid) {
      j["error"] = e.error;
      arr.push_back(std::move(j));
      continue;
    }
    const StateInfo& i = e.info;
    const bool same_model = i.model.hparams_hash == live.hparams_hash && i.model.tokenizer_hash == live.tokenizer_hash &&
                            i.model.tensors_hash == live.tensors_hash && i.model.weights_hash == live.weights_hash;
    j["n_tokens"] = i.layout.n_cells();
    j["created_ms"] = i.created_ms;
    j["model"] = {{"arch", i.model.arch}, {"name", i.model.name}, {"matches_loaded_model", same_model}};
    j["type_k"] = stream_dtype(i.layout, KvStream::K);
    j["type_v"] = stream_dtype(i.layout, KvStream::V);
    j["has_logits"] = i.n_logits > 0;
    j["format_version"] = std::to_string(i.major) + "." + std::to_string(i.minor);
    j["prompt"] = same_model ? prompt_preview(*st.rctx.vocab, i.cell_pos, i.cell_token) : std::string();
    arr.push_back(std::move(j));
  }
  send_json(res, arr);
}

void delete_saved(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  if (!st.engine.slot_dir) return send_error(res, api_error(ErrorKind::NotSupported, kNoSlotPath));
  const std::string name = req.matches[1].str();
  if (Status s = st.engine.slot_dir->remove(name); !s.is_ok()) return send_error(res, api_error(s));
  send_json(res, {{"filename", name}, {"deleted", true}});
}

void rename_saved(ServerState& st, const httplib::Request& req, httplib::Response& res) {
  if (!st.engine.slot_dir) return send_error(res, api_error(ErrorKind::NotSupported, kNoSlotPath));
  if (req.get_param_value("action") != "rename") return send_error(res, api_error(ErrorKind::InvalidRequest, "Invalid action"));
  auto body = parse_json_body(req.body);
  if (!body.is_ok()) return send_error(res, api_error(ErrorKind::InvalidRequest, body.status().message()));
  std::string to;
  if (auto e = parse_required_string(*body, "filename", &to)) return send_error(res, *e);
  const std::string from = req.matches[1].str();
  bool exists = false;
  if (Status s = st.engine.slot_dir->rename(from, to, &exists); !s.is_ok())
    return send_error(res, exists ? api_error(ErrorKind::Conflict, s.message()) : api_error(s));
  send_json(res, {{"filename", to}, {"renamed_from", from}});
}

}  // namespace

void add_slot_routes(httplib::Server& svr, ServerState& st) {
  svr.Get("/slots", guarded(st, list_slots));
  svr.Get("/slots/saved", guarded(st, list_saved));
  svr.Delete(R"(/slots/saved/(.+))", guarded(st, delete_saved));
  svr.Post(R"(/slots/saved/(.+))", guarded(st, rename_saved));
  svr.Post(R"(/slots/([^/]+))", guarded(st, slot_action));
}

}  // namespace kvstash
