#include "server/errors.h"

namespace kvstash {

HttpErrorClass http_error_class(ErrorKind k) {
  switch (k) {
    case ErrorKind::InvalidRequest: return {400, "invalid_request_error"};
    case ErrorKind::Authentication: return {401, "authentication_error"};
    case ErrorKind::Permission: return {403, "permission_error"};
    case ErrorKind::NotFound: return {404, "not_found_error"};
    case ErrorKind::Conflict: return {409, "conflict_error"};
    case ErrorKind::PayloadTooLarge: return {413, "invalid_request_error"};
    case ErrorKind::Server: return {500, "server_error"};
    case ErrorKind::NotSupported: return {501, "not_supported_error"};
    case ErrorKind::Unavailable: return {503, "unavailable_error"};
    case ErrorKind::InsufficientStorage: return {507, "server_error"};
    case ErrorKind::ExceedContext: return {400, "exceed_context_size_error"};
  }
  return {500, "server_error"};
}

ErrorKind error_kind_for(StatusCode c) {
  switch (c) {
    case StatusCode::InvalidArgument:
    case StatusCode::Corruption: return ErrorKind::InvalidRequest;
    case StatusCode::NotFound: return ErrorKind::NotFound;
    case StatusCode::Unsupported: return ErrorKind::NotSupported;
    case StatusCode::ResourceExhausted: return ErrorKind::Unavailable;
    case StatusCode::Ok:
    case StatusCode::IO:
    case StatusCode::Internal: return ErrorKind::Server;
  }
  return ErrorKind::Server;
}

int error_status(const ApiError& e) { return http_error_class(e.kind).status; }

nlohmann::json error_body(const ApiError& e) {
  const HttpErrorClass c = http_error_class(e.kind);
  nlohmann::json err = {{"code", c.status}, {"message", e.message}, {"type", c.type}};
  if (e.extra.is_object())
    for (const auto& [k, v] : e.extra.items()) err[k] = v;
  return nlohmann::json{{"error", std::move(err)}};
}

}  // namespace kvstash
