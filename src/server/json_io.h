// JSON at the edge: parsing untrusted request bodies and serialising responses, without
// exceptions escaping. Owns nothing. Thread-safe: pure functions.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kvstash {

// Nesting deeper than this is refused before parsing (nlohmann's DOM is fine, but no request
// needs it and every consumer of the value would pay for it).
inline constexpr int kMaxJsonDepth = 64;

// Parses a request body: InvalidArgument with the parser's message for malformed JSON, for an
// empty body, for invalid UTF-8 and for nesting deeper than kMaxJsonDepth. Never throws.
Result<nlohmann::json> parse_json_body(std::string_view body);

// Serialises without throwing: invalid UTF-8 (a token piece may hold half a character) is
// replaced by U+FFFD.
std::string dump_json(const nlohmann::json& j);

// True when s is valid UTF-8.
bool is_valid_utf8(std::string_view s);

}  // namespace kvstash
