// HTTP errors: llama.cpp's envelope {"error":{"code","message","type"}} and the one table that
// maps an error kind — and every StatusCode — to an HTTP status and an OpenAI error type.
// Owns nothing. Thread-safe: pure functions.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kvstash {

enum class ErrorKind {
  InvalidRequest,   // 400 invalid_request_error
  Authentication,   // 401 authentication_error
  Permission,       // 403 permission_error
  NotFound,         // 404 not_found_error
  Conflict,         // 409 conflict_error (rename onto an existing file)
  PayloadTooLarge,  // 413 invalid_request_error
  Server,           // 500 server_error
  NotSupported,     // 501 not_supported_error
  Unavailable,      // 503 unavailable_error
  InsufficientStorage,  // 507 server_error (a save hit ENOSPC / EDQUOT)
  ExceedContext,    // 400 exceed_context_size_error (+ n_prompt_tokens, n_ctx)
};

struct HttpErrorClass {
  int status;
  const char* type;
};

// The table: kind -> HTTP status + type.
HttpErrorClass http_error_class(ErrorKind k);
// The one StatusCode -> kind mapping (then http_error_class): InvalidArgument and Corruption ->
// 400, NotFound -> 404, Unsupported -> 501, ResourceExhausted -> 503, IO and Internal -> 500.
ErrorKind error_kind_for(StatusCode c);

struct ApiError {
  ErrorKind kind = ErrorKind::InvalidRequest;
  std::string message;
  nlohmann::json extra = nlohmann::json::object();  // merged into "error" (e.g. n_ctx)
};

inline ApiError api_error(ErrorKind k, std::string message) { return ApiError{k, std::move(message), nlohmann::json::object()}; }
inline ApiError api_error(const Status& s) { return api_error(error_kind_for(s.code()), s.message()); }

// {"error":{"code":status,"message":...,"type":...,<extra>}}
nlohmann::json error_body(const ApiError& e);
int error_status(const ApiError& e);

}  // namespace kvstash
