#include "server/chat_template.h"

#include <cctype>
#include <sstream>
#include <utility>

namespace kvstash {
namespace {

struct NamedFormat {
  const char* name;
  ChatFormat format;
};

constexpr NamedFormat kNames[] = {
    {"chatml", ChatFormat::Chatml},         {"llama2", ChatFormat::Llama2},         {"llama2-sys", ChatFormat::Llama2Sys},
    {"llama3", ChatFormat::Llama3},         {"deepseek", ChatFormat::Deepseek},     {"deepseek2", ChatFormat::Deepseek2},
    {"deepseek3", ChatFormat::Deepseek3},   {"mistral-v1", ChatFormat::MistralV1},  {"mistral-v3", ChatFormat::MistralV3},
    {"mistral-v7", ChatFormat::MistralV7},  {"gemma", ChatFormat::Gemma},           {"zephyr", ChatFormat::Zephyr},
};
constexpr std::pair<const char*, ChatFormat> kAliases[] = {
    {"llama-2", ChatFormat::Llama2Sys}, {"llama-3", ChatFormat::Llama3},     {"deepseek-v2", ChatFormat::Deepseek2},
    {"deepseek-v3", ChatFormat::Deepseek3}, {"mistral", ChatFormat::MistralV7},
};

// DeepSeek's special tokens use fullwidth bars and U+2581.
constexpr const char* kDsUser = "<\xEF\xBD\x9C" "User\xEF\xBD\x9C>";
constexpr const char* kDsAssistant = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
constexpr const char* kDsEos = "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>";

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  for (const auto& n : kNames)
    if (n.format == f) return n.name;
  return "?";
}

std::vector<std::string> chat_format_names() {
  std::vector<std::string> out;
  for (const auto& n : kNames) out.emplace_back(n.name);
  for (const auto& [a, f] : kAliases) out.emplace_back(a);
  return out;
}

std::optional<ChatFormat> chat_format_from_name(const std::string& name) {
  for (const auto& n : kNames)
    if (name == n.name) return n.format;
  for (const auto& [a, f] : kAliases)
    if (name == a) return f;
  return std::nullopt;
}

std::optional<ChatFormat> detect_chat_format(const std::string& t) {
  auto has = [&](const char* s) { return t.find(s) != std::string::npos; };
  // Same order of tests as llama.cpp, restricted to the formats built in here. Templates of
  // other families (phi, command-r, ...) must not fall through to a look-alike.
  if (has("<|im_start|>")) {
    if (has("<|im_sep|>") || has("<end_of_utterance>")) return std::nullopt;  // phi-4, smolvlm
    return ChatFormat::Chatml;
  }
  if (t.rfind("mistral", 0) == 0 || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return ChatFormat::MistralV7;
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return ChatFormat::MistralV1;
      if (has("\"[INST]\"")) return std::nullopt;  // v3-tekken: not built in
      return ChatFormat::MistralV3;
    }
    if (has("content.strip()") || has("bos_token + '[INST]")) return std::nullopt;  // llama2 variants not built in
    return has("<<SYS>>") ? ChatFormat::Llama2Sys : ChatFormat::Llama2;
  }
  if (has("<|assistant|>") && (has("<|end|>") || has("<|user|>"))) return std::nullopt;  // phi-3, falcon-3, glm-edge
  if (has("[gMASK]")) return std::nullopt;                                                   // chatglm
  if (has("<|user|>") && has("<|endoftext|>")) return ChatFormat::Zephyr;
  if (has("bos_token + message['role']")) return std::nullopt;  // monarch
  if (has("<start_of_turn>")) return ChatFormat::Gemma;
  if (has("### Instruction:") && has("<|EOT|>")) return ChatFormat::Deepseek;
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return ChatFormat::Llama3;
  if (has("'Assistant: ' + message['content'] + eos_token")) return ChatFormat::Deepseek2;
  if (has(kDsAssistant) && has(kDsUser) && has(kDsEos)) return ChatFormat::Deepseek3;
  return std::nullopt;
}

std::string format_chat(ChatFormat f, const std::vector<ChatMessage>& msgs, bool add_ass) {
  std::ostringstream ss;
  switch (f) {
    case ChatFormat::Chatml:
      for (const auto& m : msgs) ss << "<|im_start|>" << m.role << "\n" << m.content << "<|im_end|>\n";
      if (add_ass) ss << "<|im_start|>assistant\n";
      break;
    case ChatFormat::Llama2:
    case ChatFormat::Llama2Sys: {
      // The first "<s>" is the tokenizer's BOS; later turns open with "[INST] ".
      const bool sys = f == ChatFormat::Llama2Sys;
      bool inside = true;
      ss << "[INST] ";
      for (const auto& m : msgs) {
        if (!inside) {
          inside = true;
          ss << "[INST] ";
        }
        if (m.role == "system") {
          if (sys) ss << "<<SYS>>\n" << m.content << "\n<</SYS>>\n\n";
          else ss << m.content << "\n";
        } else if (m.role == "user") {
          ss << m.content << " [/INST]";
        } else {
          ss << m.content << "</s>";
          inside = false;
        }
      }
      break;
    }
    case ChatFormat::Llama3:
      for (const auto& m : msgs) ss << "<|start_header_id|>" << m.role << "<|end_header_id|>\n\n" << trim(m.content) << "<|eot_id|>";
      if (add_ass) ss << "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatFormat::Deepseek:
      for (const auto& m : msgs) {
        if (m.role == "system") ss << m.content;
        else if (m.role == "user") ss << "### Instruction:\n" << m.content << "\n";
        else if (m.role == "assistant") ss << "### Response:\n" << m.content << "\n<|EOT|>\n";
      }
      if (add_ass) ss << "### Response:\n";
      break;
    case ChatFormat::Deepseek2:
      for (const auto& m : msgs) {
        if (m.role == "system") ss << m.content << "\n\n";
        else if (m.role == "user") ss << "User: " << m.content << "\n\n";
        else if (m.role == "assistant") ss << "Assistant: " << m.content << kDsEos;
      }
      if (add_ass) ss << "Assistant:";
      break;
    case ChatFormat::Deepseek3:
      for (const auto& m : msgs) {
        if (m.role == "system") ss << m.content << "\n\n";
        else if (m.role == "user") ss << kDsUser << m.content;
        else if (m.role == "assistant") ss << kDsAssistant << m.content << kDsEos;
      }
      if (add_ass) ss << kDsAssistant;
      break;
    case ChatFormat::MistralV1:
    case ChatFormat::MistralV3: {
      const std::string lead = f == ChatFormat::MistralV1 ? " " : "";
      bool inside = false;
      for (const auto& m : msgs) {
        if (!inside) {
          ss << lead << "[INST] ";
          inside = true;
        }
        if (m.role == "system") {
          ss << m.content << "\n\n";
        } else if (m.role == "user") {
          ss << m.content << lead << "[/INST]";
        } else {
          ss << " " << (f == ChatFormat::MistralV3 ? trim(m.content) : m.content) << "</s>";
          inside = false;
        }
      }
      break;
    }
    case ChatFormat::MistralV7:
      for (const auto& m : msgs) {
        if (m.role == "system") ss << "[SYSTEM_PROMPT] " << m.content << "[/SYSTEM_PROMPT]";
        else if (m.role == "user") ss << "[INST] " << m.content << "[/INST]";
        else ss << " " << m.content << "</s>";
      }
      break;
    case ChatFormat::Gemma: {
      // No system role: its text is merged into the next user turn. "assistant" is "model".
      std::string system;
      for (const auto& m : msgs) {
        if (m.role == "system") {
          system += trim(m.content);
          continue;
        }
        const std::string role = m.role == "assistant" ? "model" : m.role;
        ss << "<start_of_turn>" << role << "\n";
        if (!system.empty() && role != "model") {
          ss << system << "\n\n";
          system.clear();
        }
        ss << trim(m.content) << "<end_of_turn>\n";
      }
      if (add_ass) ss << "<start_of_turn>model\n";
      break;
    }
    case ChatFormat::Zephyr:
      for (const auto& m : msgs) ss << "<|" << m.role << "|>\n" << m.content << "<|endoftext|>\n";
      if (add_ass) ss << "<|assistant|>\n";
      break;
  }
  return ss.str();
}

Result<ChatTemplate> ChatTemplate::choose(const std::string& forced_name, const std::string& gguf_template) {
  ChatTemplate t;
  t.source_ = gguf_template;
  if (!forced_name.empty()) {
    auto f = chat_format_from_name(forced_name);
    if (!f) {
      std::string names;
      for (const auto& n : chat_format_names()) names += (names.empty() ? "" : ", ") + n;
      return invalid_argument("--chat-template: unknown format '" + forced_name + "' (built in: " + names + ")");
    }
    t.status_ = ChatTemplateStatus::Forced;
    t.format_ = f;
    return t;
  }
  if (gguf_template.empty()) {
    t.status_ = ChatTemplateStatus::Default;
    t.format_ = ChatFormat::Chatml;
    return t;
  }
  t.format_ = detect_chat_format(gguf_template);
  t.status_ = t.format_ ? ChatTemplateStatus::Detected : ChatTemplateStatus::Unrecognized;
  return t;
}

const char* ChatTemplate::status_name() const {
  switch (status_) {
    case ChatTemplateStatus::Forced: return "forced";
    case ChatTemplateStatus::Detected: return "detected";
    case ChatTemplateStatus::Default: return "default";
    case ChatTemplateStatus::Unrecognized: return "unrecognized";
  }
  return "?";
}

Result<std::string> ChatTemplate::apply(const std::vector<ChatMessage>& messages, bool add_assistant) const {
  if (!format_)
    return unsupported("the model's chat template is not one of the built-in formats; restart the server with --chat-template NAME");
  return format_chat(*format_, messages, add_assistant);
}

}  // namespace kvstash
