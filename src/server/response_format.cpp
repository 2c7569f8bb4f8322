#include "server/response_format.h"

#include <cmath>
#include <random>

#include "server/json_io.h"

namespace kvstash {
namespace {

using json = nlohmann::json;

json token_bytes(const std::string& piece) {
  json b = json::array();
  for (unsigned char c : piece) b.push_back(int(c));
  return b;
}

// llama.cpp's probability entry: {id, token, bytes, logprob|prob, top_logprobs|top_probs}.
json prob_entry(const GenToken& t, const Vocab& vocab, bool post_sampling) {
  auto one = [&](int32_t id, float p) {
    const std::string piece = vocab.token_to_piece(id, true);
    json e = {{"id", id}, {"token", piece}, {"bytes", token_bytes(piece)}};
    if (post_sampling) e["prob"] = p;
    else e["logprob"] = p > 0 ? std::log(p) : -1e30;
    return e;
  };
  json e = one(t.id, t.prob);
  json top = json::array();
  for (const auto& tp : t.top) top.push_back(one(tp.id, tp.prob));
  e[post_sampling ? "top_probs" : "top_logprobs"] = std::move(top);
  return e;
}

double per_token(double ms, int32_t n) { return n > 0 ? ms / n : 0.0; }
double per_second(double ms, int32_t n) { return ms > 0 ? 1e3 / ms * n : 0.0; }

}  // namespace

json timings_json(const GenSummary& s) {
  return {
      {"cache_n", s.n_cached},
      {"prompt_n", s.n_prompt_processed},
      {"prompt_ms", s.prompt_ms},
      {"prompt_per_token_ms", per_token(s.prompt_ms, s.n_prompt_processed)},
      {"prompt_per_second", per_second(s.prompt_ms, s.n_prompt_processed)},
      {"predicted_n", s.n_predicted},
      {"predicted_ms", s.predicted_ms},
      {"predicted_per_token_ms", per_token(s.predicted_ms, s.n_predicted)},
      {"predicted_per_second", per_second(s.predicted_ms, s.n_predicted)},
  };
}

json sampling_params_json(const GenRequest& g, uint64_t seed, bool stream) {
  const SamplerParams& p = g.sampling;
  return {
      {"n_predict", g.n_predict},
      {"seed", seed},
      {"temperature", p.temperature},
      {"dynatemp_range", 0.0},
      {"dynatemp_exponent", 1.0},
      {"top_k", p.top_k},
      {"top_p", p.top_p},
      {"min_p", p.min_p},
      {"typical_p", 1.0},
      {"repeat_last_n", p.repeat_last_n},
      {"repeat_penalty", p.repeat_penalty},
      {"presence_penalty", 0.0},
      {"frequency_penalty", 0.0},
      {"mirostat", 0},
      {"stop", g.stop},
      {"max_tokens", g.n_predict},
      {"n_keep", 0},
      {"n_discard", 0},
      {"ignore_eos", g.ignore_eos},
      {"stream", stream},
      {"n_probs", g.n_probs},
      {"min_keep", 0},
      {"cache_prompt", g.cache_prompt},
      {"id_slot", g.id_slot},
      {"post_sampling_probs", g.post_sampling_probs},
      {"samplers", json::array({"penalties", "top_k", "top_p", "min_p", "temperature"})},
      {"lora", json::array()},
  };
}

json slot_json(const SlotSnapshot& s) {
  GenRequest g;
  g.sampling = s.params;
  g.n_predict = s.n_predict;
  g.stop = s.stop;
  g.ignore_eos = s.ignore_eos;
  g.n_probs = s.n_probs;
  json j = {
      {"id", s.id},
      {"n_ctx", s.n_ctx},
      {"speculative", false},
      {"is_processing", s.is_processing},
      {"n_cached_tokens", s.n_cached_tokens},
  };
  if (s.id_task >= 0) {
    j["id_task"] = s.id_task;
    j["n_prompt_tokens"] = s.n_prompt_tokens;
    j["n_prompt_tokens_processed"] = s.n_prompt_tokens_processed;
    j["n_prompt_tokens_cache"] = s.n_prompt_tokens_cache;
    j["params"] = sampling_params_json(g, s.seed, false);
    const int32_t remain = s.n_predict < 0 ? -1 : std::max(0, s.n_predict - s.n_decoded);
    j["next_token"] = json::array({{{"has_next_token", s.has_next_token},
                                    {"has_new_line", s.has_new_line},
                                    {"n_remain", remain},
                                    {"n_decoded", s.n_decoded}}});
    // kvstash: the task's decode steps, when the last began (CLOCK_MONOTONIC microseconds), and
    // whether it was dropped because its client disconnected.
    j["n_decode_steps"] = s.n_decode_steps;
    j["t_last_decode_us"] = s.t_last_decode_us;
    j["cancelled"] = s.cancelled;
  }
  return j;
}

json llama_final(const CompletionResult& r, const CompletionRequest& req, const ResponseContext& rc, bool streaming) {
  const GenSummary& s = r.summary;
  json tokens = json::array();
  if (req.return_tokens && !streaming)
    for (const auto& t : r.tokens) tokens.push_back(t.id);
  json j = {
      {"index", r.index},
      {"content", streaming ? std::string() : r.content},
      {"tokens", std::move(tokens)},
      {"id_slot", s.id_slot},
      {"stop", true},
      {"model", rc.model},
      {"tokens_predicted", s.n_predicted},
      {"tokens_evaluated", s.n_prompt},
      {"generation_settings", sampling_params_json(req.gen, s.seed, req.stream)},
      {"prompt", rc.vocab->detokenize(r.prompt, true)},
      {"has_new_line", r.content.find('\n') != std::string::npos},
      {"truncated", s.truncated},
      {"stop_type", stop_type_name(s.stop_type)},
      {"stopping_word", s.stopping_word},
      {"tokens_cached", s.n_tokens_cached},
      {"timings", timings_json(s)},
  };
  if (req.gen.n_probs > 0 && !streaming) {
    json probs = json::array();
    for (const auto& t : r.tokens) probs.push_back(prob_entry(t, *rc.vocab, req.gen.post_sampling_probs));
    j["completion_probabilities"] = std::move(probs);
  }
  return j;
}

json llama_partial(const GenToken& t, int32_t n_decoded, const CompletionResult& r, const CompletionRequest& req, const ResponseContext& rc) {
  json j = {
      {"index", r.index},
      {"content", t.text},
      {"tokens", json::array({t.id})},
      {"stop", false},
      {"id_slot", r.summary.id_slot},
      {"tokens_predicted", n_decoded},
      {"tokens_evaluated", int32_t(r.prompt.size())},
  };
  if (req.gen.n_probs > 0) j["completion_probabilities"] = json::array({prob_entry(t, *rc.vocab, req.gen.post_sampling_probs)});
  return j;
}

const char* finish_reason(StopType t) { return t == StopType::Limit ? "length" : "stop"; }

std::string random_id(const char* prefix) {
  static const char kAlnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = prefix;
  for (int i = 0; i < 32; ++i) id += kAlnum[rng() % (sizeof kAlnum - 1)];
  return id;
}

json oai_logprobs(const std::vector<GenToken>& toks, const Vocab& vocab) {
  json content = json::array();
  for (const auto& t : toks) {
    auto one = [&](int32_t id, float p) {
      const std::string piece = vocab.token_to_piece(id, true);
      return json{{"id", id}, {"token", piece}, {"bytes", token_bytes(piece)}, {"logprob", p > 0 ? std::log(p) : -1e30}};
    };
    json e = one(t.id, t.prob);
    json top = json::array();
    for (const auto& tp : t.top) top.push_back(one(tp.id, tp.prob));
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  return json{{"content", std::move(content)}};
}

json oai_usage(const std::vector<CompletionResult>& rs, bool chat) {
  int64_t completion = 0, prompt = 0, cached = 0;
  for (const auto& r : rs) {
    completion += r.summary.n_predicted;
    prompt += r.summary.n_prompt;
    cached += r.summary.n_cached;
  }
  json u = {{"completion_tokens", completion}, {"prompt_tokens", prompt}, {"total_tokens", completion + prompt}};
  (void)chat;
  u["prompt_tokens_details"] = {{"cached_tokens", cached}};
  return u;
}

json oai_final(const std::vector<CompletionResult>& rs, const CompletionRequest& req, ApiFlavor flavor, const ResponseContext& rc,
               const std::string& id, int64_t created) {
  const bool chat = flavor == ApiFlavor::OaiChat;
  json choices = json::array();
  for (const auto& r : rs) {
    json c = {{"index", r.index}, {"finish_reason", finish_reason(r.summary.stop_type)}};
    json lp = req.logprobs ? oai_logprobs(r.tokens, *rc.vocab) : json(nullptr);
    if (chat) c["message"] = {{"role", "assistant"}, {"content", r.content}};
    else c["text"] = r.content;
    c["logprobs"] = std::move(lp);
    choices.push_back(std::move(c));
  }
  json j = {
      {"choices", std::move(choices)},
      {"created", created},
      {"model", rc.model},
      {"system_fingerprint", rc.build_info},
      {"object", chat ? "chat.completion" : "text_completion"},
      {"usage", oai_usage(rs, chat)},
      {"id", id},
  };
  if (rs.size() == 1) j["timings"] = timings_json(rs[0].summary);
  return j;
}

json oai_chunk(ApiFlavor flavor, const std::string& id, int64_t created, const ResponseContext& rc, const json& delta, const std::string& text,
               const char* finish, const json& logprobs) {
  const bool chat = flavor == ApiFlavor::OaiChat;
  json c = {{"index", 0}, {"finish_reason", finish && *finish ? json(finish) : json(nullptr)}, {"logprobs", logprobs}};
  if (chat) c["delta"] = delta;
  else c["text"] = text;
  return {
      {"choices", json::array({std::move(c)})},
      {"created", created},
      {"id", id},
      {"model", rc.model},
      {"system_fingerprint", rc.build_info},
      {"object", chat ? "chat.completion.chunk" : "text_completion"},
  };
}

json oai_usage_chunk(ApiFlavor flavor, const std::string& id, int64_t created, const ResponseContext& rc, const CompletionResult& r) {
  const bool chat = flavor == ApiFlavor::OaiChat;
  return {
      {"choices", json::array()},
      {"created", created},
      {"id", id},
      {"model", rc.model},
      {"system_fingerprint", rc.build_info},
      {"object", chat ? "chat.completion.chunk" : "text_completion"},
      {"usage", oai_usage({r}, chat)},
      {"timings", timings_json(r.summary)},
  };
}

}  // namespace kvstash
