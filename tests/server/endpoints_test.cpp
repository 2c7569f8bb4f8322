// The endpoints and their llama.cpp / OpenAI shapes: health, props, models, slots, metrics,
// tokenize/detokenize, /completion (probabilities, stop strings, several prompts),
// /v1/completions, /v1/chat/completions (usage, cached_tokens), server-sent events, the saved
// state management routes, chat template selection and graceful shutdown.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "server_harness.h"
#include "test_paths.h"

namespace kvstash::test {
namespace {

namespace fs = std::filesystem;

// The reference implementation's greedy continuation of "Once upon a time" (64 tokens).
std::string golden_text() {
  std::ifstream f(reference_dir() + "/stories260K-greedy.json");
  const json j = json::parse(f);
  EXPECT_EQ(j["prompts"][0]["prompt"], "Once upon a time");
  return j["prompts"][0]["generated_text"];
}
std::vector<int> golden_tokens() {
  std::ifstream f(reference_dir() + "/stories260K-greedy.json");
  return json::parse(f)["prompts"][0]["generated_token_ids"].get<std::vector<int>>();
}

json chat_body(const std::string& text, int max_tokens = 12) {
  return {{"messages", json::array({{{"role", "system"}, {"content", "You are a storyteller."}}, {{"role", "user"}, {"content", text}}})},
          {"max_tokens", max_tokens},
          {"temperature", 0}};
}

TEST(ServerEndpoints, HealthPropsModelsSlots) {
  ServerProcess srv({"-np", "3", "-c", "768", "-a", "tiny-stories", "-n", "7"});
  srv.start();
  auto c = srv.client();
  HttpResult h = get(c, "/health");
  EXPECT_EQ(h.body["status"], "ok");
  EXPECT_EQ(h.body["slots_idle"], 3);
  EXPECT_EQ(h.body["slots_processing"], 0);
  EXPECT_EQ(get(c, "/v1/health").status, 200);

  HttpResult p = get(c, "/props");
  ASSERT_EQ(p.status, 200);
  EXPECT_EQ(p.body["total_slots"], 3);
  EXPECT_EQ(p.body["default_generation_settings"]["n_ctx"], 256);
  EXPECT_EQ(p.body["default_generation_settings"]["params"]["n_predict"], 7);
  EXPECT_EQ(p.body["model_alias"], "tiny-stories");
  EXPECT_EQ(p.body["chat_template_format"], "chatml");
  EXPECT_EQ(p.body["chat_template_status"], "default");
  EXPECT_EQ(p.body["bos_token"], "<s>");
  EXPECT_EQ(p.body["endpoint_metrics"], false);
  EXPECT_TRUE(p.body["build_info"].get<std::string>().rfind("kvstash", 0) == 0);

  HttpResult m = get(c, "/v1/models");
  EXPECT_EQ(m.body["object"], "list");
  ASSERT_EQ(m.body["data"].size(), 1u);
  EXPECT_EQ(m.body["data"][0]["id"], "tiny-stories");
  EXPECT_EQ(m.body["data"][0]["object"], "model");
  EXPECT_EQ(m.body["data"][0]["meta"]["n_vocab"], 512);

  // -n 7 is the default n_predict.
  HttpResult r = post(c, "/completion", {{"prompt", "Once upon a time"}, {"temperature", 0}, {"id_slot", 2}});
  EXPECT_EQ(r.body["tokens_predicted"], 7);
  HttpResult s = get(c, "/slots");
  ASSERT_EQ(s.body.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(s.body[i]["id"], i);
    EXPECT_EQ(s.body[i]["n_ctx"], 256);
    EXPECT_EQ(s.body[i]["is_processing"], false);
  }
  EXPECT_EQ(s.body[2]["n_prompt_tokens"], 5);
  EXPECT_EQ(s.body[2]["next_token"][0]["n_decoded"], 7);
  EXPECT_EQ(s.body[2]["n_decode_steps"], 7);  // the prompt's step samples the first token
  EXPECT_GT(s.body[2]["t_last_decode_us"].get<int64_t>(), 0);
  EXPECT_EQ(s.body[2]["cancelled"], false);
  EXPECT_FALSE(s.body[0].contains("n_decode_steps"));  // no task ran there
  EXPECT_EQ(s.body[2]["params"]["temperature"], 0.0);
  EXPECT_FALSE(s.body[0].contains("id_task"));
}

TEST(ServerEndpoints, MetricsUseLlamaCppNamesPlusKvstashCounters) {
  TempDir saves;
  ServerProcess srv({"-np", "2", "--metrics", "--slot-save-path", saves.path()});
  srv.start();
  auto c = srv.client();
  const json req = {{"prompt", "Once upon a time"}, {"n_predict", 8}, {"temperature", 0}, {"id_slot", 0}};
  ASSERT_EQ(post(c, "/completion", req).status, 200);
  ASSERT_EQ(post(c, "/completion", req).status, 200);  // 4 of 5 prompt tokens from the cache
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "m.bin"}}).status, 200);
  ASSERT_EQ(post(c, "/slots/1?action=restore", {{"filename", "m.bin"}}).status, 200);
  ASSERT_EQ(post(c, "/slots/1?action=restore", {{"filename", "missing.bin"}}).status, 400);
  httplib::Result r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  EXPECT_FALSE(r->get_header_value("Process-Start-Time-Unix").empty());
  auto value = [&](const std::string& name) {
    const std::string key = "\n" + name + " ";
    const auto at = r->body.find(key);
    EXPECT_NE(at, std::string::npos) << name;
    EXPECT_NE(r->body.find("# HELP " + name + " "), std::string::npos) << name;
    EXPECT_NE(r->body.find("# TYPE " + name + " "), std::string::npos) << name;
    return at == std::string::npos ? -1.0 : std::stod(r->body.substr(at + key.size()));
  };
  EXPECT_EQ(value("llamacpp:prompt_tokens_total"), 5 + 1);
  EXPECT_GT(value("llamacpp:prompt_seconds_total"), 0);
  EXPECT_EQ(value("llamacpp:tokens_predicted_total"), 16);
  EXPECT_GT(value("llamacpp:tokens_predicted_seconds_total"), 0);
  EXPECT_GT(value("llamacpp:n_decode_total"), 0);
  EXPECT_GE(value("llamacpp:n_tokens_max"), 5);
  EXPECT_GT(value("llamacpp:prompt_tokens_seconds"), 0);
  EXPECT_GT(value("llamacpp:predicted_tokens_seconds"), 0);
  EXPECT_EQ(value("llamacpp:requests_processing"), 0);
  EXPECT_EQ(value("llamacpp:requests_deferred"), 0);
  EXPECT_GE(value("llamacpp:n_busy_slots_per_decode"), 1);
  EXPECT_GT(value("llamacpp:kv_cache_usage_ratio"), 0);
  EXPECT_GT(value("llamacpp:kv_cache_tokens"), 0);
  EXPECT_EQ(value("kvstash:prompt_tokens_cached_total"), 4);
  EXPECT_EQ(value("kvstash:slot_saves_total"), 1);
  EXPECT_EQ(value("kvstash:slot_saves_failed_total"), 0);
  EXPECT_EQ(value("kvstash:slot_restores_total"), 1);
  EXPECT_EQ(value("kvstash:slot_restores_failed_total"), 1);
  EXPECT_EQ(value("kvstash:slot_save_bytes_written_total"), double(fs::file_size(saves / "m.bin")));
  EXPECT_EQ(value("kvstash:slot_restore_bytes_read_total"), double(fs::file_size(saves / "m.bin")));
  EXPECT_EQ(value("kvstash:requests_total"), 2);
  EXPECT_EQ(value("kvstash:requests_cancelled_total"), 0);
}

TEST(ServerEndpoints, TokenizeDetokenize) {
  ServerProcess srv({});
  srv.start();
  auto c = srv.client();
  // The reference ids of ../shared/reference/stories260K-greedy.json: [1, 403, 407, 261, 378].
  EXPECT_EQ(post(c, "/tokenize", {{"content", "Once upon a time"}}).body["tokens"], json({403, 407, 261, 378}));
  EXPECT_EQ(post(c, "/tokenize", {{"content", "Once upon a time"}, {"add_special", true}}).body["tokens"], json({1, 403, 407, 261, 378}));
  HttpResult p = post(c, "/tokenize", {{"content", "Once upon"}, {"with_pieces", true}});
  EXPECT_EQ(p.body["tokens"], json::parse(R"([{"id":403,"piece":" Once"},{"id":407,"piece":" upon"}])"));
  EXPECT_EQ(post(c, "/tokenize", {{"content", "<s>x"}, {"parse_special", true}}).body["tokens"][0], 1);
  EXPECT_NE(post(c, "/tokenize", {{"content", "<s>x"}, {"parse_special", false}}).body["tokens"][0], 1);
  EXPECT_EQ(post(c, "/detokenize", {{"tokens", {403, 407, 261, 378}}}).body["content"], " Once upon a time");
  EXPECT_EQ(post(c, "/detokenize", {{"tokens", json::array()}}).body["content"], "");
  EXPECT_EQ(post(c, "/detokenize", json::object()).body["content"], "");
}

TEST(ServerEndpoints, CompletionFieldsProbabilitiesStopsAndPrompts) {
  ServerProcess srv({"-np", "2"});
  srv.start();
  auto c = srv.client();
  HttpResult r = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 64}, {"temperature", 0}, {"return_tokens", true}});
  ASSERT_EQ(r.status, 200);
  // The golden continuation of the reference implementation.
  EXPECT_EQ(r.body["content"], golden_text());
  EXPECT_EQ(r.body["tokens"], json(golden_tokens()));
  for (const char* k : {"index", "content", "tokens", "id_slot", "stop", "model", "tokens_predicted", "tokens_evaluated", "generation_settings",
                        "prompt", "has_new_line", "truncated", "stop_type", "stopping_word", "tokens_cached", "timings"})
    EXPECT_TRUE(r.body.contains(k)) << k;
  for (const char* k : {"cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                        "predicted_per_token_ms", "predicted_per_second"})
    EXPECT_TRUE(r.body["timings"].contains(k)) << k;
  EXPECT_EQ(r.body["stop_type"], "limit");
  EXPECT_EQ(r.body["has_new_line"], true);
  EXPECT_EQ(r.body["tokens"].size(), 64u);
  EXPECT_EQ(r.body["tokens"][0], 432);

  // Stop strings, also across token boundaries.
  HttpResult w = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 64}, {"temperature", 0}, {"stop", {"girl nam", "zzz"}}});
  EXPECT_EQ(w.body["content"], golden_text().substr(0, golden_text().find("girl nam")));
  EXPECT_EQ(w.body["stop_type"], "word");
  EXPECT_EQ(w.body["stopping_word"], "girl nam");

  // n_probs: the softmax of the raw logits (llama.cpp's default) and the post-sampling variant.
  HttpResult pr = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 2}, {"temperature", 0}, {"n_probs", 3}});
  ASSERT_EQ(pr.body["completion_probabilities"].size(), 2u);
  const json& p0 = pr.body["completion_probabilities"][0];
  EXPECT_EQ(p0["id"], 432);
  EXPECT_EQ(p0["token"], ",");
  EXPECT_EQ(p0["top_logprobs"].size(), 3u);
  EXPECT_EQ(p0["top_logprobs"][1]["id"], 383);
  // The reference server's probabilities (0.96703, 0.028752), within the logit tolerance of the goldens.
  EXPECT_NEAR(std::exp(p0["logprob"].get<double>()), 0.96703, 3e-3);
  EXPECT_NEAR(std::exp(p0["top_logprobs"][1]["logprob"].get<double>()), 0.028752, 1e-3);
  HttpResult pp = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 1}, {"temperature", 0}, {"n_probs", 2},
                                          {"post_sampling_probs", true}});
  EXPECT_TRUE(pp.body["completion_probabilities"][0].contains("top_probs"));
  EXPECT_TRUE(pp.body["completion_probabilities"][0].contains("prob"));

  // Several prompts: one result each, in order.
  HttpResult multi = post(c, "/completion", {{"prompt", {"Once upon a time", json::array({1, 403, 407, 261, 378})}}, {"n_predict", 4}, {"temperature", 0}});
  ASSERT_TRUE(multi.body.is_array()) << multi.raw;
  ASSERT_EQ(multi.body.size(), 2u);
  EXPECT_EQ(multi.body[0]["index"], 0);
  EXPECT_EQ(multi.body[1]["index"], 1);
  EXPECT_EQ(multi.body[0]["content"], multi.body[1]["content"]);
  // A mixed prompt of tokens and text.
  HttpResult mixed = post(c, "/completion", {{"prompt", json::array({1, 403, "upon a time"})}, {"n_predict", 4}, {"temperature", 0}});
  EXPECT_EQ(mixed.body["tokens_evaluated"], 5);
  // n_predict 0: the prompt is evaluated into the cache only.
  HttpResult zero = post(c, "/completion", {{"prompt", "Once upon"}, {"n_predict", 0}});
  EXPECT_EQ(zero.body["tokens_predicted"], 0);
  EXPECT_EQ(zero.body["content"], "");
}

TEST(ServerEndpoints, OpenAiCompletionsAndChatWithUsage) {
  ServerProcess srv({"-np", "1", "-a", "stories"});
  srv.start();
  auto c = srv.client();
  HttpResult a = post(c, "/v1/chat/completions", chat_body("Tell me a story."));
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["object"], "chat.completion");
  EXPECT_EQ(a.body["model"], "stories");
  EXPECT_EQ(a.body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(a.body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(a.body["choices"][0]["finish_reason"], "length");
  const json& u = a.body["usage"];
  EXPECT_EQ(u["completion_tokens"], 12);
  EXPECT_EQ(u["total_tokens"], u["prompt_tokens"].get<int>() + 12);
  EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(a.body["timings"]["prompt_n"], u["prompt_tokens"]);
  // The same conversation again: everything but the last prompt token comes from the cache.
  HttpResult b = post(c, "/v1/chat/completions", chat_body("Tell me a story."));
  EXPECT_EQ(b.body["usage"]["prompt_tokens_details"]["cached_tokens"], u["prompt_tokens"].get<int>() - 1);
  EXPECT_EQ(b.body["choices"][0]["message"]["content"], a.body["choices"][0]["message"]["content"]);
  // The formatted prompt is chatml (the default for a model without a template).
  HttpResult t = post(c, "/tokenize", {{"content", "<|im_start|>system\nYou are a storyteller.<|im_end|>\n<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n"},
                                       {"add_special", true}});
  EXPECT_EQ(t.body["tokens"].size(), u["prompt_tokens"].get<size_t>());

  HttpResult lp = post(c, "/v1/chat/completions", json::parse(R"({"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"temperature":0,"logprobs":true,"top_logprobs":2})"));
  ASSERT_EQ(lp.body["choices"][0]["logprobs"]["content"].size(), 2u);
  EXPECT_EQ(lp.body["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 2u);

  HttpResult tc = post(c, "/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_EQ(tc.status, 200) << tc.raw;
  EXPECT_EQ(tc.body["object"], "text_completion");
  const std::vector<int> gt = golden_tokens();
  const std::vector<int> g8(gt.begin(), gt.begin() + 8);
  EXPECT_EQ(tc.body["choices"][0]["text"], post(c, "/detokenize", {{"tokens", g8}}).body["content"]);
  EXPECT_EQ(tc.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(tc.body["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(tc.body["usage"]["completion_tokens"], 8);
}

TEST(ServerEndpoints, ServerSentEventsFormat) {
  ServerProcess srv({"-np", "1"});
  srv.start();
  auto c = srv.client();
  // /completion: partials with stop false, then one final object; no [DONE].
  HttpResult r = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 8}, {"temperature", 0}, {"stream", true}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers.find("Content-Type")->second, "text/event-stream");
  auto ev = sse_payloads(r.raw);
  ASSERT_EQ(ev.size(), 9u);
  std::string text;
  for (size_t i = 0; i < 8; ++i) {
    const json e = json::parse(ev[i]);
    EXPECT_EQ(e["stop"], false);
    EXPECT_EQ(e["tokens"].size(), 1u);
    EXPECT_EQ(e["tokens_predicted"], int(i + 1));
    EXPECT_EQ(e["id_slot"], 0);
    text += e["content"].get<std::string>();
  }
  const json last = json::parse(ev[8]);
  EXPECT_EQ(last["stop"], true);
  EXPECT_EQ(last["content"], "");
  EXPECT_EQ(last["stop_type"], "limit");
  EXPECT_TRUE(last.contains("timings"));
  const std::vector<int> gt = golden_tokens();
  const std::vector<int> g8(gt.begin(), gt.begin() + 8);
  const std::string text8 = post(c, "/detokenize", {{"tokens", g8}}).body["content"];
  EXPECT_EQ(text, text8);

  // /v1/chat/completions: a role chunk, content deltas, a finish chunk with timings, the usage
  // chunk (stream_options.include_usage), then [DONE].
  json body = chat_body("Tell me a story.", 6);
  HttpResult plain = post(c, "/v1/chat/completions", body);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  HttpResult s = post(c, "/v1/chat/completions", body);
  ev = sse_payloads(s.raw);
  ASSERT_GE(ev.size(), 4u);
  EXPECT_EQ(ev.back(), "[DONE]");
  const json first = json::parse(ev[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  for (size_t i = 1; i + 3 < ev.size(); ++i) {
    const json e = json::parse(ev[i]);
    EXPECT_EQ(e["id"], first["id"]);
    EXPECT_TRUE(e["choices"][0]["finish_reason"].is_null());
    content += e["choices"][0]["delta"]["content"].get<std::string>();
  }
  const json fin = json::parse(ev[ev.size() - 3]);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(fin.contains("timings"));
  const json usage = json::parse(ev[ev.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 6);
  EXPECT_TRUE(usage["usage"]["prompt_tokens_details"].contains("cached_tokens"));
  EXPECT_EQ(content, plain.body["choices"][0]["message"]["content"]);

  // /v1/completions streams text chunks and ends with [DONE].
  HttpResult t = post(c, "/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 8}, {"temperature", 0}, {"stream", true}});
  ev = sse_payloads(t.raw);
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string txt;
  for (size_t i = 0; i + 1 < ev.size(); ++i) txt += json::parse(ev[i])["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(txt, text8);
}

TEST(ServerEndpoints, SavedStatesCanBeListedRenamedAndDeleted) {
  TempDir saves;
  ServerProcess srv({"-np", "2", "--slot-save-path", saves.path(), "-ctk", "bf16", "-ctv", "f16"});
  srv.start();
  auto c = srv.client();
  ASSERT_EQ(post(c, "/completion", {{"prompt", "What is the capital of France?"}, {"n_predict", 4}, {"temperature", 0}, {"id_slot", 0}}).status, 200);
  ASSERT_EQ(post(c, "/slots/0?action=save", {{"filename", "a.bin"}}).status, 200);
  ASSERT_EQ(post(c, "/slots/1?action=save", {{"filename", "empty.bin"}}).status, 200);
  { std::ofstream(saves / "junk.bin") << "junk"; }
  HttpResult l = get(c, "/slots/saved");
  ASSERT_EQ(l.status, 200) << l.raw;
  ASSERT_EQ(l.body.size(), 3u) << l.raw;
  const json& a = l.body[0];
  EXPECT_EQ(a["filename"], "a.bin");
  EXPECT_EQ(a["valid"], true);
  EXPECT_EQ(a["n_tokens"], 24);
  EXPECT_EQ(a["size_bytes"], fs::file_size(saves / "a.bin"));
  EXPECT_EQ(a["model"]["arch"], "llama");
  EXPECT_EQ(a["model"]["matches_loaded_model"], true);
  EXPECT_EQ(a["type_k"], "bf16");
  EXPECT_EQ(a["type_v"], "f16");
  EXPECT_EQ(a["has_logits"], true);
  EXPECT_GT(a["created_ms"].get<int64_t>(), 0);
  EXPECT_GT(a["mtime"].get<int64_t>(), 0);
  EXPECT_EQ(a["prompt"].get<std::string>().rfind("What is the capital of France?", 0), 0u) << a["prompt"];
  EXPECT_EQ(l.body[1]["filename"], "empty.bin");
  EXPECT_EQ(l.body[1]["n_tokens"], 0);
  EXPECT_EQ(l.body[2]["filename"], "junk.bin");
  EXPECT_EQ(l.body[2]["valid"], false);

  HttpResult rn = post(c, "/slots/saved/a.bin?action=rename", {{"filename", "b.bin"}});
  EXPECT_EQ(rn.status, 200) << rn.raw;
  EXPECT_TRUE(fs::exists(saves / "b.bin"));
  EXPECT_FALSE(fs::exists(saves / "a.bin"));
  HttpResult conflict = post(c, "/slots/saved/b.bin?action=rename", {{"filename", "empty.bin"}});
  EXPECT_EQ(conflict.status, 409) << conflict.raw;
  EXPECT_EQ(conflict.body["error"]["type"], "conflict_error");
  EXPECT_TRUE(fs::exists(saves / "b.bin"));
  EXPECT_EQ(post(c, "/slots/saved/nope.bin?action=rename", {{"filename", "x.bin"}}).status, 404);
  EXPECT_EQ(post(c, "/slots/saved/b.bin?action=move", {{"filename", "x.bin"}}).status, 400);
  EXPECT_EQ(post(c, "/slots/saved/b.bin?action=rename", json::object()).status, 400);
  // The renamed state still restores.
  EXPECT_EQ(post(c, "/slots/1?action=restore", {{"filename", "b.bin"}}).body["n_restored"], 24);

  HttpResult d = del(c, "/slots/saved/b.bin");
  EXPECT_EQ(d.status, 200) << d.raw;
  EXPECT_EQ(d.body["deleted"], true);
  EXPECT_FALSE(fs::exists(saves / "b.bin"));
  HttpResult d2 = del(c, "/slots/saved/b.bin");
  EXPECT_EQ(d2.status, 404) << d2.raw;
  EXPECT_EQ(d2.body["error"]["type"], "not_found_error");
  EXPECT_EQ(get(c, "/slots/saved").body.size(), 2u);
}

TEST(ServerEndpoints, ChatTemplateIsDetectedForcedOrReported) {
  TempDir dir;
  const std::string llama3 = dir / "llama3.gguf", odd = dir / "odd.gguf";
  copy_gguf_with(model_path("stories260K.gguf"), llama3,
                 {{"tokenizer.chat_template", "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}"}});
  copy_gguf_with(model_path("stories260K.gguf"), odd, {{"tokenizer.chat_template", "{{ messages | my_own_format }}"}});
  {
    ServerProcess srv({"-m", llama3});
    srv.start();
    auto c = srv.client();
    HttpResult p = get(c, "/props");
    EXPECT_EQ(p.body["chat_template_format"], "llama3");
    EXPECT_EQ(p.body["chat_template_status"], "detected");
    EXPECT_EQ(post(c, "/v1/chat/completions", chat_body("Hi", 2)).status, 200);
  }
  {
    ServerProcess srv({"-m", odd});
    srv.start();
    auto c = srv.client();
    HttpResult p = get(c, "/props");
    EXPECT_TRUE(p.body["chat_template_format"].is_null());
    EXPECT_EQ(p.body["chat_template_status"], "unrecognized");
    EXPECT_EQ(p.body["chat_template"], "{{ messages | my_own_format }}");
    HttpResult r = post(c, "/v1/chat/completions", chat_body("Hi", 2));
    EXPECT_EQ(r.status, 501) << r.raw;
    EXPECT_NE(r.raw.find("--chat-template"), std::string::npos);
    EXPECT_NE(srv.log().find("matches no built-in format"), std::string::npos) << srv.log();
    EXPECT_EQ(post(c, "/completion", {{"prompt", "Once"}, {"n_predict", 2}}).status, 200);
  }
  {
    ServerProcess srv({"-m", odd, "--chat-template", "gemma"});
    srv.start();
    auto c = srv.client();
    EXPECT_EQ(get(c, "/props").body["chat_template_status"], "forced");
    EXPECT_EQ(post(c, "/v1/chat/completions", chat_body("Hi", 2)).status, 200);
  }
  ServerProcess bad({"--chat-template", "no-such-format"});
  EXPECT_EQ(bad.run_to_exit(), 1);
  EXPECT_NE(bad.log().find("unknown format"), std::string::npos) << bad.log();
}

TEST(ServerEndpoints, SigtermDrainsInFlightStreamsAndExitsZero) {
  ServerProcess srv({"-np", "1", "-c", "8192"});
  srv.start();
  std::string body;
  std::thread client([&] {
    auto c = srv.client();
    body = post(c, "/completion", {{"prompt", "Once upon a time"}, {"n_predict", 1500}, {"ignore_eos", true}, {"temperature", 0}, {"stream", true}}).raw;
  });
  auto c = srv.client();
  while (get(c, "/slots").body[0]["is_processing"] != true) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ::kill(srv.pid(), SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Draining: new requests are refused (or the socket is already closed).
  HttpResult late = post(c, "/completion", {{"prompt", "x"}, {"n_predict", 1}});
  EXPECT_TRUE(late.status == 503 || late.status == 0) << late.raw;
  client.join();
  const auto ev = sse_payloads(body);
  ASSERT_FALSE(ev.empty());
  const json last = json::parse(ev.back());
  EXPECT_EQ(last["stop"], true) << "the in-flight stream was cut";
  EXPECT_EQ(last["tokens_predicted"], 1500);
  EXPECT_EQ(srv.stop(0), 0) << srv.log();  // (already exiting) exit status 0
}

}  // namespace
}  // namespace kvstash::test
