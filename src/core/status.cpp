#include "core/status.h"

namespace kvstash {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::Ok: return "OK";
    case StatusCode::InvalidArgument: return "InvalidArgument";
    case StatusCode::NotFound: return "NotFound";
    case StatusCode::Corruption: return "Corruption";
    case StatusCode::Unsupported: return "Unsupported";
    case StatusCode::ResourceExhausted: return "ResourceExhausted";
    case StatusCode::IO: return "IO";
    case StatusCode::Internal: return "Internal";
  }
  return "Unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "OK";
  return std::string(status_code_name(code_)) + ": " + message_;
}

}  // namespace kvstash
