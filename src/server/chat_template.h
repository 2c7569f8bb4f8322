// Chat templates: built-in formatters for the common model families, chosen by --chat-template
// or detected from the GGUF's tokenizer.chat_template by distinctive substrings (as llama.cpp's
// llm_chat_detect_template does). Not a Jinja engine. A template that matches no formatter is
// reported (ChatTemplateStatus::Unrecognized), never guessed; only a model without any template
// falls back to the documented default, chatml.
// Thread-safe: immutable after construction.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace kvstash {

enum class ChatFormat { Chatml, Llama2, Llama2Sys, Llama3, Deepseek, Deepseek2, Deepseek3, MistralV1, MistralV3, MistralV7, Gemma, Zephyr };

enum class ChatTemplateStatus {
  Forced,        // --chat-template NAME
  Detected,      // matched the GGUF's template
  Default,       // the GGUF has no template: chatml
  Unrecognized,  // the GGUF's template matches no built-in format: chat requests are refused
};

struct ChatMessage {
  std::string role;
  std::string content;
};

const char* chat_format_name(ChatFormat f);
// Accepts llama.cpp's names (chatml, llama2, llama2-sys, llama3, deepseek, deepseek2, deepseek3,
// mistral-v1, mistral-v3, mistral-v7, gemma, zephyr) and the aliases llama-2, llama-3,
// deepseek-v2, deepseek-v3, mistral (= mistral-v7).
std::optional<ChatFormat> chat_format_from_name(const std::string& name);
std::vector<std::string> chat_format_names();
// Matches a Jinja template text against the built-in formats; nullopt when none fits.
std::optional<ChatFormat> detect_chat_format(const std::string& jinja);

class ChatTemplate {
 public:
  // forced_name: --chat-template (may be empty); gguf_template: tokenizer.chat_template (may be empty).
  // InvalidArgument for an unknown forced name.
  static Result<ChatTemplate> choose(const std::string& forced_name, const std::string& gguf_template);

  ChatTemplateStatus status() const { return status_; }
  const char* status_name() const;
  std::optional<ChatFormat> format() const { return format_; }
  const std::string& source() const { return source_; }  // the GGUF's template text

  // The prompt for `messages`, ending with the assistant's turn header (add_assistant).
  // Unsupported when the template is unrecognized.
  Result<std::string> apply(const std::vector<ChatMessage>& messages, bool add_assistant = true) const;

 private:
  ChatTemplateStatus status_ = ChatTemplateStatus::Default;
  std::optional<ChatFormat> format_;
  std::string source_;
};

// The formatter itself (used by ChatTemplate::apply and by tests).
std::string format_chat(ChatFormat f, const std::vector<ChatMessage>& messages, bool add_assistant);

}  // namespace kvstash
