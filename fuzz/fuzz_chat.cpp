// libFuzzer target: chat templates. Input: one selector byte (bits 0-3: the ChatFormat to
// format with, bit 4: add the assistant turn header), then NUL-separated fields: a template
// text, then (role, content) pairs. A one-byte role field r stands for system, user, assistant
// or tool (r % 4), so the mutator reaches every branch; longer fields are roles as they are.
// Invariants: template detection agrees with ChatTemplate::choose, and an unrecognized
// template refuses to format; every message's content (trimmed where the format trims it)
// appears in the prompt, in message order, unless the format drops that message (deepseek:
// unknown roles; gemma: a system message with no later user turn to merge into) or moves it
// (gemma: system texts open the next turn that is not the model's); with the
// assistant header asked for, the prompt ends with it; ChatTemplate::apply equals format_chat.
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "server/chat_template.h"

using namespace kvstash;

namespace {

constexpr ChatFormat kFormats[] = {ChatFormat::Chatml,    ChatFormat::Llama2,    ChatFormat::Llama2Sys, ChatFormat::Llama3,
                                   ChatFormat::Deepseek,  ChatFormat::Deepseek2, ChatFormat::Deepseek3, ChatFormat::MistralV1,
                                   ChatFormat::MistralV3, ChatFormat::MistralV7, ChatFormat::Gemma,     ChatFormat::Zephyr};
constexpr size_t kNumFormats = sizeof(kFormats) / sizeof(kFormats[0]);

std::string trim(const std::string& s) {
  const char* ws = " \t\n\v\f\r";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool known_role(const std::string& r) { return r == "system" || r == "user" || r == "assistant"; }

// What of each message must appear in the prompt, in prompt order: (message index, text).
std::vector<std::pair<size_t, std::string>> expected_texts(ChatFormat f, const std::vector<ChatMessage>& msgs) {
  std::vector<std::pair<size_t, std::string>> out;
  std::vector<size_t> pending_system;  // gemma
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    switch (f) {
      case ChatFormat::Chatml:
      case ChatFormat::Llama2:
      case ChatFormat::Llama2Sys:
      case ChatFormat::MistralV1:
      case ChatFormat::MistralV7:
      case ChatFormat::Zephyr: out.emplace_back(i, m.content); break;
      case ChatFormat::Llama3: out.emplace_back(i, trim(m.content)); break;
      case ChatFormat::Deepseek:
      case ChatFormat::Deepseek2:
      case ChatFormat::Deepseek3:
        if (known_role(m.role)) out.emplace_back(i, m.content);
        break;
      case ChatFormat::MistralV3: out.emplace_back(i, (m.role == "system" || m.role == "user") ? m.content : trim(m.content)); break;
      case ChatFormat::Gemma:
        // System texts wait for the next turn that is not the model's and open it; with no
        // such turn they are dropped.
        if (m.role == "system") {
          pending_system.push_back(i);
          break;
        }
        if (m.role != "assistant" && m.role != "model") {
          for (size_t s : pending_system) out.emplace_back(s, trim(msgs[s].content));
          pending_system.clear();
        }
        out.emplace_back(i, trim(m.content));
        break;
    }
  }
  return out;
}

const char* assistant_header(ChatFormat f) {
  switch (f) {
    case ChatFormat::Chatml: return "<|im_start|>assistant\n";
    case ChatFormat::Llama3: return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFormat::Deepseek: return "### Response:\n";
    case ChatFormat::Deepseek2: return "Assistant:";
    case ChatFormat::Deepseek3: return "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
    case ChatFormat::Gemma: return "<start_of_turn>model\n";
    case ChatFormat::Zephyr: return "<|assistant|>\n";
    default: return nullptr;  // llama2 and mistral prompts end with the user's [/INST]
  }
}

void check_template(const std::string& tmpl) {
  const std::optional<ChatFormat> detected = detect_chat_format(tmpl);
  auto chosen = ChatTemplate::choose("", tmpl);
  FUZZ_CHECK(chosen.is_ok(), chosen.status().to_string());
  if (tmpl.empty()) {
    FUZZ_CHECK(chosen->status() == ChatTemplateStatus::Default && chosen->format() == ChatFormat::Chatml, "no template: chatml");
  } else if (detected) {
    FUZZ_CHECK(chosen->status() == ChatTemplateStatus::Detected && chosen->format() == detected, "choose differs from detect");
    FUZZ_CHECK(chat_format_from_name(chat_format_name(*detected)) == detected, "format name does not round-trip");
  } else {
    FUZZ_CHECK(chosen->status() == ChatTemplateStatus::Unrecognized && !chosen->format(), "unrecognized template got a format");
    auto applied = chosen->apply({{"user", "hi"}});
    FUZZ_CHECK(!applied.is_ok() && applied.status().code() == StatusCode::Unsupported, "unrecognized template formatted a prompt");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const ChatFormat f = kFormats[(data[0] & 15) % kNumFormats];
  const bool add_ass = data[0] & 16;
  std::vector<std::string> fields(1);
  for (size_t i = 1; i < size; ++i) {
    if (data[i] == 0) fields.emplace_back();
    else fields.back() += static_cast<char>(data[i]);
  }
  check_template(fields[0]);

  static const char* kRoles[4] = {"system", "user", "assistant", "tool"};
  std::vector<ChatMessage> msgs;
  for (size_t i = 1; i + 1 < fields.size(); i += 2) {
    const std::string& r = fields[i];
    msgs.push_back({r.size() == 1 ? kRoles[static_cast<uint8_t>(r[0]) % 4] : r, fields[i + 1]});
  }
  const std::string prompt = format_chat(f, msgs, add_ass);

  size_t cursor = 0;
  for (const auto& [i, want] : expected_texts(f, msgs)) {
    const size_t at = prompt.find(want, cursor);
    FUZZ_CHECK(at != std::string::npos, std::string(chat_format_name(f)) + ": message " + std::to_string(i) + " (" + msgs[i].role +
                                            ") is missing from the prompt, or out of order");
    cursor = at + want.size();
  }
  if (const char* h = assistant_header(f); h && add_ass) {
    const std::string header = h;
    FUZZ_CHECK(prompt.size() >= header.size() && prompt.compare(prompt.size() - header.size(), header.size(), header) == 0,
               std::string(chat_format_name(f)) + ": the prompt does not end with the assistant header");
  }
  auto forced = ChatTemplate::choose(chat_format_name(f), fields[0]);
  FUZZ_CHECK(forced.is_ok() && forced->status() == ChatTemplateStatus::Forced, "forcing a built-in format failed");
  auto applied = forced->apply(msgs, add_ass);
  FUZZ_CHECK(applied.is_ok() && *applied == prompt, "ChatTemplate::apply differs from format_chat");
  return 0;
}
