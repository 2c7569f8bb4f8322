// Built-in chat formats (the strings llama.cpp's llm_chat_apply_template produces) and their
// detection from Jinja templates.
#include "server/chat_template.h"

#include <gtest/gtest.h>

namespace kvstash {
namespace {

const std::vector<ChatMessage> kConv = {
    {"system", "You are a helpful assistant"}, {"user", "Hello"}, {"assistant", "Hi there"},
    {"user", "Who are you"},                   {"assistant", "   I am an assistant   "}, {"user", "Another question"},
};

TEST(ChatTemplate, Formats) {
  EXPECT_EQ(format_chat(ChatFormat::Chatml, kConv, true),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi "
            "there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   "
            "<|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(format_chat(ChatFormat::Llama2Sys, kConv, true),
            "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an "
            "assistant   </s>[INST] Another question [/INST]");
  EXPECT_EQ(format_chat(ChatFormat::Llama2, kConv, true),
            "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>[INST] "
            "Another question [/INST]");
  EXPECT_EQ(format_chat(ChatFormat::Llama3, kConv, true),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho "
            "are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_"
            "id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(format_chat(ChatFormat::Gemma, kConv, true),
            "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_"
            "turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother "
            "question<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(format_chat(ChatFormat::Zephyr, kConv, true),
            "<|system|>\nYou are a helpful assistant<|endoftext|>\n<|user|>\nHello<|endoftext|>\n<|assistant|>\nHi "
            "there<|endoftext|>\n<|user|>\nWho are you<|endoftext|>\n<|assistant|>\n   I am an assistant   "
            "<|endoftext|>\n<|user|>\nAnother question<|endoftext|>\n<|assistant|>\n");
  EXPECT_EQ(format_chat(ChatFormat::Deepseek, kConv, true),
            "You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n### Instruction:\nWho are you\n### "
            "Response:\n   I am an assistant   \n<|EOT|>\n### Instruction:\nAnother question\n### Response:\n");
  EXPECT_EQ(format_chat(ChatFormat::Deepseek2, kConv, true),
            "You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>User: Who are you\n\nAssistant:    I am an "
            "assistant   <｜end▁of▁sentence｜>User: Another question\n\nAssistant:");
  EXPECT_EQ(format_chat(ChatFormat::Deepseek3, kConv, true),
            "You are a helpful assistant\n\n<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜><｜User｜>Who are "
            "you<｜Assistant｜>   I am an assistant   <｜end▁of▁sentence｜><｜User｜>Another question<｜Assistant｜>");
  EXPECT_EQ(format_chat(ChatFormat::MistralV7, kConv, true),
            "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST]    I am an "
            "assistant   </s>[INST] Another question[/INST]");
  EXPECT_EQ(format_chat(ChatFormat::MistralV1, kConv, true),
            " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an assistant   </s> [INST] "
            "Another question [/INST]");
  EXPECT_EQ(format_chat(ChatFormat::MistralV3, kConv, true),
            "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>[INST] Another "
            "question[/INST]");
}

TEST(ChatTemplate, DetectionBySubstrings) {
  EXPECT_EQ(detect_chat_format("{% for m in messages %}<|im_start|>{{ m.role }}"), ChatFormat::Chatml);
  EXPECT_EQ(detect_chat_format("<|start_header_id|>' + role + '<|end_header_id|>"), ChatFormat::Llama3);
  EXPECT_EQ(detect_chat_format("[INST] <<SYS>>"), ChatFormat::Llama2Sys);
  EXPECT_EQ(detect_chat_format("{{ '[INST] ' + content }}"), ChatFormat::Llama2);
  EXPECT_EQ(detect_chat_format("[SYSTEM_PROMPT] [INST]"), ChatFormat::MistralV7);
  EXPECT_EQ(detect_chat_format("[AVAILABLE_TOOLS] [INST]"), ChatFormat::MistralV1);
  EXPECT_EQ(detect_chat_format("[AVAILABLE_TOOLS][INST]"), ChatFormat::MistralV3);
  EXPECT_EQ(detect_chat_format("<start_of_turn>user"), ChatFormat::Gemma);
  EXPECT_EQ(detect_chat_format("<|user|>\n{{ content }}<|endoftext|>"), ChatFormat::Zephyr);
  EXPECT_EQ(detect_chat_format("### Instruction:\n ... <|EOT|>"), ChatFormat::Deepseek);
  EXPECT_EQ(detect_chat_format("{{ 'Assistant: ' + message['content'] + eos_token }}"), ChatFormat::Deepseek2);
  EXPECT_EQ(detect_chat_format("<｜User｜>{{c}}<｜Assistant｜>{{a}}<｜end▁of▁sentence｜>"), ChatFormat::Deepseek3);
  // Other families are reported as unrecognized, not mistaken for a look-alike.
  EXPECT_EQ(detect_chat_format("<|im_start|>user<|im_sep|>"), std::nullopt);                // phi-4
  EXPECT_EQ(detect_chat_format("<|user|>\n{{c}}<|end|>\n<|assistant|>"), std::nullopt);      // phi-3
  EXPECT_EQ(detect_chat_format("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>"), std::nullopt);      // command-r
  EXPECT_EQ(detect_chat_format("{{ messages | tojson }}"), std::nullopt);
}

TEST(ChatTemplate, ChoiceForcedDetectedDefaultOrUnrecognized) {
  auto forced = ChatTemplate::choose("llama-3", "<|im_start|>");
  ASSERT_TRUE(forced.is_ok());
  EXPECT_EQ(forced->status(), ChatTemplateStatus::Forced);
  EXPECT_EQ(forced->format(), ChatFormat::Llama3);
  EXPECT_EQ(ChatTemplate::choose("mistral", "")->format(), ChatFormat::MistralV7);
  EXPECT_EQ(ChatTemplate::choose("deepseek-v3", "")->format(), ChatFormat::Deepseek3);
  EXPECT_FALSE(ChatTemplate::choose("jinja-please", "").is_ok());
  auto none = ChatTemplate::choose("", "");
  EXPECT_EQ(none->status(), ChatTemplateStatus::Default);
  EXPECT_EQ(none->format(), ChatFormat::Chatml);
  auto odd = ChatTemplate::choose("", "{{ weird }}");
  EXPECT_EQ(odd->status(), ChatTemplateStatus::Unrecognized);
  auto applied = odd->apply({{"user", "hi"}});
  ASSERT_FALSE(applied.is_ok());
  EXPECT_EQ(applied.status().code(), StatusCode::Unsupported);
  for (const auto& n : chat_format_names()) EXPECT_TRUE(chat_format_from_name(n).has_value()) << n;
}

}  // namespace
}  // namespace kvstash
