#include "server/request_params.h"

#include <cmath>
#include <limits>

namespace kvstash {
namespace {

using json = nlohmann::json;
using MaybeError = std::optional<ApiError>;

MaybeError bad(std::string msg) { return api_error(ErrorKind::InvalidRequest, std::move(msg)); }

const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

// True when j[key] is the string `want`. (json::value(key, default) throws when the field has
// another type, so it is never used on request bodies.)
bool string_field_is(const json& j, const char* key, const char* want) {
  const json* v = field(j, key);
  return v && v->is_string() && v->get_ref<const std::string&>() == want;
}

// An integer field (an integral float such as 24.0 is accepted, as llama.cpp does).
MaybeError get_int(const json& j, const char* key, int64_t lo, int64_t hi, int64_t* out) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  int64_t x;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return bad(std::string("'") + key + "' is out of range");
    x = int64_t(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_float()) {
    const double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) return bad(std::string("'") + key + "' must be an integer");
    x = int64_t(d);
  } else {
    return bad(std::string("'") + key + "' must be an integer");
  }
  if (x < lo || x > hi)
    return bad(std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(x));
  *out = x;
  return std::nullopt;
}

MaybeError get_i32(const json& j, const char* key, int64_t lo, int64_t hi, int32_t* out) {
  int64_t x = *out;
  if (auto e = get_int(j, key, lo, hi, &x)) return e;
  *out = int32_t(x);
  return std::nullopt;
}

MaybeError get_float(const json& j, const char* key, double lo, double hi, float* out) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) return bad(std::string("'") + key + "' must be a number");
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    return bad(std::string("'") + key + "' must be a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  *out = float(d);
  return std::nullopt;
}

MaybeError get_bool(const json& j, const char* key, bool* out) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) return bad(std::string("'") + key + "' must be a boolean");
  *out = v->get<bool>();
  return std::nullopt;
}

MaybeError get_stop(const json& j, std::vector<std::string>* out) {
  const json* v = field(j, "stop");
  if (!v) return std::nullopt;
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > kMaxStopStrings) return bad("'stop' holds more than " + std::to_string(kMaxStopStrings) + " strings");
    for (const auto& s : *v) {
      if (!s.is_string()) return bad("'stop' must be a string or an array of strings");
      stops.push_back(s.get<std::string>());
    }
  } else {
    return bad("'stop' must be a string or an array of strings");
  }
  for (const auto& s : stops)
    if (s.size() > kMaxStopBytes) return bad("a 'stop' string is longer than " + std::to_string(kMaxStopBytes) + " bytes");
  *out = std::move(stops);
  return std::nullopt;
}

// Features of llama.cpp's sampler chain that kvstash does not implement: refused when they are
// asked for with a non-neutral value rather than silently ignored.
MaybeError refuse_unsupported(const json& j) {
  struct Neutral {
    const char* key;
    double value;
  };
  static const Neutral kNumbers[] = {{"presence_penalty", 0}, {"frequency_penalty", 0}, {"mirostat", 0}, {"dry_multiplier", 0},
                                     {"xtc_probability", 0},  {"typical_p", 1},         {"dynatemp_range", 0}};
  for (const auto& n : kNumbers) {
    const json* v = field(j, n.key);
    if (!v) continue;
    if (!v->is_number()) return bad(std::string("'") + n.key + "' must be a number");
    if (v->get<double>() != n.value)
      return bad(std::string("'") + n.key + "' is not supported by this server (only " + std::to_string(int(n.value)) + ")");
  }
  for (const char* key : {"grammar", "json_schema", "logit_bias", "lora", "tools", "image_data", "multimodal_data"}) {
    const json* v = field(j, key);
    if (v && !(v->is_string() && v->get<std::string>().empty()) && !(v->is_array() && v->empty()) && !(v->is_object() && v->empty()))
      return bad(std::string("'") + key + "' is not supported by this server");
  }
  if (const json* rf = field(j, "response_format")) {
    if (!rf->is_object() || (field(*rf, "type") && !string_field_is(*rf, "type", "text")))
      return bad("'response_format' other than {\"type\":\"text\"} is not supported by this server");
  }
  return std::nullopt;
}

MaybeError check_token(const json& t, const RequestContext& rc, int32_t* out) {
  if (!t.is_number_integer() && !t.is_number_unsigned()) return bad("a prompt token must be an integer id");
  const int64_t id = t.is_number_unsigned() ? int64_t(std::min<uint64_t>(t.get<uint64_t>(), uint64_t(1) << 40)) : t.get<int64_t>();
  if (id < 0 || id >= rc.n_vocab)
    return bad("Invalid token id " + std::to_string(id) + ": expected 0.." + std::to_string(rc.n_vocab - 1));
  *out = int32_t(id);
  return std::nullopt;
}

ApiError exceed_context(int64_t n_prompt, int32_t n_ctx, bool lower_bound) {
  ApiError e = api_error(ErrorKind::ExceedContext, std::string("the request exceeds the available context size, try increasing it: ") +
                                                       (lower_bound ? "at least " : "") + std::to_string(n_prompt) +
                                                       " prompt tokens, slot context " + std::to_string(n_ctx));
  e.extra = {{"n_prompt_tokens", n_prompt}, {"n_ctx", n_ctx}};
  return e;
}

MaybeError tokenize_text(const std::string& text, bool add_special, const RequestContext& rc, std::vector<int32_t>* out) {
  // A token covers at most max_token_bytes bytes: a text that long cannot fit, whatever it is.
  const size_t at_least = text.size() / std::max<size_t>(rc.max_token_bytes, 1);
  if (at_least >= size_t(rc.n_ctx_slot)) return exceed_context(int64_t(at_least), rc.n_ctx_slot, true);
  std::vector<int32_t> t = rc.vocab->tokenize(text, add_special, /*parse_special=*/true);
  out->insert(out->end(), t.begin(), t.end());
  return std::nullopt;
}

// One prompt: a string, or an array of token ids and strings (mixed).
MaybeError one_prompt(const json& p, const RequestContext& rc, std::vector<int32_t>* out) {
  if (p.is_string()) return tokenize_text(p.get<std::string>(), true, rc, out);
  if (!p.is_array()) return bad("'prompt' must be a string, an array of token ids, or an array of those");
  bool first = true;
  for (const auto& e : p) {
    if (e.is_string()) {
      if (auto err = tokenize_text(e.get<std::string>(), first, rc, out)) return err;
    } else {
      int32_t id;
      if (auto err = check_token(e, rc, &id)) return err;
      out->push_back(id);
    }
    first = false;
  }
  return std::nullopt;
}

bool is_single_prompt(const json& p) {
  if (p.is_string()) return true;
  if (!p.is_array()) return false;
  bool any_number = false;
  for (const auto& e : p) {
    if (e.is_number()) any_number = true;
    else if (!e.is_string()) return false;
  }
  return any_number || p.empty();
}

MaybeError parse_prompts(const json& body, const RequestContext& rc, std::vector<std::vector<int32_t>>* out) {
  const json* p = field(body, "prompt");
  if (!p) return bad("'prompt' is required");
  std::vector<const json*> items;
  if (is_single_prompt(*p)) {
    items.push_back(p);
  } else if (p->is_array()) {
    if (p->empty()) return bad("'prompt' is empty");
    if (p->size() > kMaxPrompts) return bad("'prompt' holds more than " + std::to_string(kMaxPrompts) + " prompts");
    for (const auto& e : *p) items.push_back(&e);
  } else {
    return bad("'prompt' must be a string, an array of token ids, or an array of those");
  }
  for (const json* it : items) {
    std::vector<int32_t> toks;
    if (auto e = one_prompt(*it, rc, &toks)) return e;
    out->push_back(std::move(toks));
  }
  return std::nullopt;
}

MaybeError parse_messages(const json& body, const RequestContext& rc, std::vector<int32_t>* out) {
  const json* m = field(body, "messages");
  if (!m || !m->is_array() || m->empty()) return bad("'messages' must be a non-empty array");
  if (m->size() > kMaxChatMessages) return bad("'messages' holds more than " + std::to_string(kMaxChatMessages) + " messages");
  std::vector<ChatMessage> msgs;
  for (const auto& e : *m) {
    if (!e.is_object()) return bad("each message must be an object with 'role' and 'content'");
    const json* role = field(e, "role");
    if (!role || !role->is_string()) return bad("each message needs a string 'role'");
    ChatMessage cm;
    cm.role = role->get<std::string>();
    if (const json* c = field(e, "content")) {
      if (c->is_string()) {
        cm.content = c->get<std::string>();
      } else if (c->is_array()) {
        for (const auto& part : *c) {
          if (!part.is_object() || !string_field_is(part, "type", "text") || !field(part, "text") || !part["text"].is_string())
            return bad("only text content parts ({\"type\":\"text\",\"text\":...}) are supported");
          cm.content += part["text"].get_ref<const std::string&>();
        }
      } else {
        return bad("a message's 'content' must be a string or an array of text parts");
      }
    }
    msgs.push_back(std::move(cm));
  }
  auto prompt = rc.chat->apply(msgs, true);
  if (!prompt.is_ok()) return api_error(prompt.status());
  return tokenize_text(*prompt, true, rc, out);
}

}  // namespace

std::optional<ApiError> parse_completion_request(const json& body, ApiFlavor flavor, const RequestContext& rc, CompletionRequest* out) {
  if (!body.is_object()) return bad("the request body must be a JSON object");
  if (auto e = refuse_unsupported(body)) return e;
  GenRequest& g = out->gen;
  SamplerParams& sp = g.sampling;
  sp = SamplerParams{};  // llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05
  g.n_predict = rc.default_n_predict;
  if (auto e = get_i32(body, "max_tokens", -1, kMaxNPredict, &g.n_predict)) return e;
  if (auto e = get_i32(body, "max_completion_tokens", -1, kMaxNPredict, &g.n_predict)) return e;
  if (auto e = get_i32(body, "n_predict", -1, kMaxNPredict, &g.n_predict)) return e;
  if (auto e = get_float(body, "temperature", -1e6, 1e6, &sp.temperature)) return e;
  if (auto e = get_i32(body, "top_k", -1, std::numeric_limits<int32_t>::max(), &sp.top_k)) return e;
  if (sp.top_k < 0) sp.top_k = 0;
  if (auto e = get_float(body, "top_p", 0, 1, &sp.top_p)) return e;
  if (auto e = get_float(body, "min_p", 0, 1, &sp.min_p)) return e;
  if (auto e = get_float(body, "repeat_penalty", 1e-6, 1e6, &sp.repeat_penalty)) return e;
  if (auto e = get_i32(body, "repeat_last_n", -1, kSamplerMaxHistoryTokens, &sp.repeat_last_n)) return e;
  sp.seed = rc.default_seed;
  if (const json* s = field(body, "seed")) {
    if (s->is_number_integer() && s->get<int64_t>() == -1) {
      sp.seed = kSamplerRandomSeed;
    } else if (s->is_number_unsigned()) {
      sp.seed = s->get<uint64_t>();
    } else {
      return bad("'seed' must be a non-negative integer or -1 (random)");
    }
  }
  if (Status st = validate(sp); !st.is_ok()) return bad(st.message());
  if (auto e = get_stop(body, &g.stop)) return e;
  if (auto e = get_i32(body, "id_slot", -1, rc.n_slots - 1, &g.id_slot)) {
    e->message = "Invalid slot ID: " + e->message;
    return e;
  }
  if (auto e = get_bool(body, "cache_prompt", &g.cache_prompt)) return e;
  if (auto e = get_bool(body, "ignore_eos", &g.ignore_eos)) return e;
  if (auto e = get_bool(body, "post_sampling_probs", &g.post_sampling_probs)) return e;
  if (auto e = get_bool(body, "stream", &out->stream)) return e;
  if (auto e = get_bool(body, "return_tokens", &out->return_tokens)) return e;
  if (auto e = get_i32(body, "n_probs", 0, kMaxNProbs, &g.n_probs)) return e;
  int64_t n_choices = 1;
  if (auto e = get_int(body, "n", 1, 1, &n_choices)) {
    e->message = "Only one completion choice is allowed ('n' must be 1)";
    return e;
  }
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) return bad("'stream_options' must be an object");
    if (auto e = get_bool(*so, "include_usage", &out->include_usage)) return e;
  }
  if (flavor == ApiFlavor::OaiChat) {
    bool lp = false;
    if (auto e = get_bool(body, "logprobs", &lp)) return e;
    int32_t top = 0;
    if (auto e = get_i32(body, "top_logprobs", 0, 20, &top)) return e;
    if (lp) {
      out->logprobs = true;
      g.n_probs = std::max(top, 1);
    }
  } else if (flavor == ApiFlavor::OaiCompletion) {
    int32_t lp = 0;
    if (const json* v = field(body, "logprobs"); v && !v->is_boolean()) {
      if (auto e = get_i32(body, "logprobs", 0, 5, &lp)) return e;
    }
    if (lp > 0) {
      out->logprobs = true;
      g.n_probs = lp;
    }
  }
  g.n_probs = std::min(g.n_probs, rc.n_vocab);

  if (flavor == ApiFlavor::OaiChat) {
    std::vector<int32_t> toks;
    if (auto e = parse_messages(body, rc, &toks)) return e;
    out->prompts.push_back(std::move(toks));
  } else {
    if (auto e = parse_prompts(body, rc, &out->prompts)) return e;
  }
  for (const auto& p : out->prompts) {
    if (p.empty()) return bad("the prompt is empty (and the vocabulary adds no BOS token)");
    if (p.size() >= size_t(rc.n_ctx_slot)) return exceed_context(int64_t(p.size()), rc.n_ctx_slot, false);
  }
  if (out->stream && out->prompts.size() > 1) return bad("streaming is supported for a single prompt only");
  return std::nullopt;
}

std::optional<ApiError> parse_tokenize_request(const json& body, TokenizeRequest* out) {
  if (!body.is_object()) return bad("the request body must be a JSON object");
  const json* c = field(body, "content");
  if (!c || !c->is_string()) return bad("'content' must be a string");
  out->content = c->get<std::string>();
  if (auto e = get_bool(body, "add_special", &out->add_special)) return e;
  if (auto e = get_bool(body, "parse_special", &out->parse_special)) return e;
  if (auto e = get_bool(body, "with_pieces", &out->with_pieces)) return e;
  return std::nullopt;
}

std::optional<ApiError> parse_detokenize_request(const json& body, int32_t n_vocab, std::vector<int32_t>* out) {
  if (!body.is_object()) return bad("the request body must be a JSON object");
  const json* t = field(body, "tokens");
  if (!t) return std::nullopt;  // llama.cpp: no tokens, empty content
  if (!t->is_array()) return bad("'tokens' must be an array of token ids");
  RequestContext rc;
  rc.n_vocab = n_vocab;
  for (const auto& e : *t) {
    int32_t id;
    if (auto err = check_token(e, rc, &id)) return err;
    out->push_back(id);
  }
  return std::nullopt;
}

std::optional<ApiError> parse_required_string(const json& body, const char* key, std::string* out) {
  if (!body.is_object()) return bad("the request body must be a JSON object");
  const json* v = field(body, key);
  if (!v || !v->is_string()) return bad(std::string("'") + key + "' is required and must be a string");
  *out = v->get<std::string>();
  return std::nullopt;
}

}  // namespace kvstash
