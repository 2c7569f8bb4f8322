// Request parsing and validation: JSON bodies of /completion, /v1/completions,
// /v1/chat/completions, /tokenize, /detokenize and the slot actions, into engine requests.
// Every field is type- and range-checked; prompts are tokenized and checked against the slot
// context here, so the scheduler only ever sees valid requests. Never throws.
// Thread-safe: pure functions of their inputs (the vocab is immutable).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/scheduler.h"
#include "model/vocab.h"
#include "server/chat_template.h"
#include "server/errors.h"

namespace kvstash {

enum class ApiFlavor { Llama, OaiCompletion, OaiChat };

// Bounds on request values (documented in docs/api.md).
inline constexpr int32_t kMaxNPredict = 1 << 20;
inline constexpr int32_t kMaxNProbs = 100;
inline constexpr size_t kMaxPrompts = 16;
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;
inline constexpr size_t kMaxChatMessages = 4096;

struct RequestContext {
  const Vocab* vocab = nullptr;
  int32_t n_vocab = 0;
  int32_t n_ctx_slot = 0;
  int32_t n_slots = 1;
  size_t max_token_bytes = 1;      // longest token text: a prompt of B bytes has >= B / this tokens
  const ChatTemplate* chat = nullptr;
  uint64_t default_seed = kSamplerRandomSeed;
  int32_t default_n_predict = -1;
};

struct CompletionRequest {
  std::vector<std::vector<int32_t>> prompts;  // tokenized; one result per prompt
  GenRequest gen;                             // all but the prompt
  bool stream = false;
  bool return_tokens = false;
  bool include_usage = false;                 // stream_options.include_usage
  bool logprobs = false;                      // OpenAI logprobs wanted in the choices
};

std::optional<ApiError> parse_completion_request(const nlohmann::json& body, ApiFlavor flavor, const RequestContext& rc,
                                                 CompletionRequest* out);

struct TokenizeRequest {
  std::string content;
  bool add_special = false;
  bool parse_special = true;
  bool with_pieces = false;
};
std::optional<ApiError> parse_tokenize_request(const nlohmann::json& body, TokenizeRequest* out);

// {"tokens": [ids]}: every id in [0, n_vocab).
std::optional<ApiError> parse_detokenize_request(const nlohmann::json& body, int32_t n_vocab, std::vector<int32_t>* out);

// A required string field (e.g. "filename").
std::optional<ApiError> parse_required_string(const nlohmann::json& body, const char* key, std::string* out);

}  // namespace kvstash
