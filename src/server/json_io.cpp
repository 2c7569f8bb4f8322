#include "server/json_io.h"

namespace kvstash {
namespace {

// Bracket depth of a JSON text, ignoring brackets inside strings.
int max_depth(std::string_view s) {
  int depth = 0, best = 0;
  bool in_str = false, esc = false;
  for (char c : s) {
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '[' || c == '{') best = std::max(best, ++depth);
    else if (c == ']' || c == '}') --depth;
    if (best > kMaxJsonDepth) return best;
  }
  return best;
}

}  // namespace

Result<nlohmann::json> parse_json_body(std::string_view body) {
  size_t i = 0;
  while (i < body.size() && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t')) ++i;
  if (i == body.size()) return invalid_argument("the request body is empty, expected a JSON object");
  if (max_depth(body) > kMaxJsonDepth)
    return invalid_argument("the request body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  nlohmann::json j = nlohmann::json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again with exceptions only to get the parser's message (position and reason).
    try {
      const nlohmann::json again = nlohmann::json::parse(body.begin(), body.end());
      (void)again;
    } catch (const std::exception& e) {
      return invalid_argument(std::string("malformed JSON: ") + e.what());
    }
    return invalid_argument("malformed JSON");
  }
  return j;
}

std::string dump_json(const nlohmann::json& j) {
  try {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } catch (const std::exception&) {
    return "{}";
  }
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    i += len;
  }
  return true;
}

}  // namespace kvstash
