// Response JSON: llama.cpp's /completion results (final and streamed partials) and the OpenAI
// shapes of /v1/completions and /v1/chat/completions (results, chunks, usage), plus the
// timings, generation settings and /slots objects they share.
// Thread-safe: pure functions (the vocab is immutable).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/scheduler.h"
#include "model/vocab.h"
#include "server/request_params.h"

namespace kvstash {

// One prompt's generation, as collected from its GenEvents.
struct CompletionResult {
  int32_t index = 0;
  std::vector<int32_t> prompt;
  std::string content;
  std::vector<GenToken> tokens;
  GenSummary summary;
};

struct ResponseContext {
  const Vocab* vocab = nullptr;
  std::string model;        // alias or model path
  std::string build_info;   // "kvstash 0.1.0 (commit)"
  int32_t n_ctx_slot = 0;
};

nlohmann::json timings_json(const GenSummary& s);
nlohmann::json sampling_params_json(const GenRequest& g, uint64_t seed, bool stream);
nlohmann::json slot_json(const SlotSnapshot& s);

// ---- llama.cpp /completion ----
// streaming: the closing object of a stream (content "", no tokens).
nlohmann::json llama_final(const CompletionResult& r, const CompletionRequest& req, const ResponseContext& rc, bool streaming);
nlohmann::json llama_partial(const GenToken& t, int32_t n_decoded, const CompletionResult& r, const CompletionRequest& req,
                             const ResponseContext& rc);

// ---- OpenAI ----
const char* finish_reason(StopType t);  // "stop" | "length"
std::string random_id(const char* prefix);  // e.g. "chatcmpl-<32 alnum>"
nlohmann::json oai_usage(const std::vector<CompletionResult>& rs, bool chat);
nlohmann::json oai_final(const std::vector<CompletionResult>& rs, const CompletionRequest& req, ApiFlavor flavor,
                         const ResponseContext& rc, const std::string& id, int64_t created);
// A chunk with the given choice delta. finish: "" for none. Chat deltas are objects; completion
// chunks carry the text.
nlohmann::json oai_chunk(ApiFlavor flavor, const std::string& id, int64_t created, const ResponseContext& rc, const nlohmann::json& delta,
                         const std::string& text, const char* finish, const nlohmann::json& logprobs);
// The closing usage chunk (stream_options.include_usage): empty choices plus usage.
nlohmann::json oai_usage_chunk(ApiFlavor flavor, const std::string& id, int64_t created, const ResponseContext& rc,
                               const CompletionResult& r);
// OpenAI logprobs content entries for some tokens.
nlohmann::json oai_logprobs(const std::vector<GenToken>& toks, const Vocab& vocab);

}  // namespace kvstash
