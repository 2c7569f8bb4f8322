// Request validation without a server (src/server/request_params.h): the parsers never throw,
// whatever the JSON types; a bad field is an invalid_request_error naming it.
#include "server/request_params.h"

#include <gtest/gtest.h>

#include <memory>

#include "gguf/gguf_reader.h"
#include "server/json_io.h"
#include "test_paths.h"

namespace kvstash {
namespace {

using json = nlohmann::json;

struct Fixture {
  std::unique_ptr<Vocab> vocab;
  ChatTemplate chat;
  RequestContext rc;
};

const Fixture& fixture() {
  static const std::unique_ptr<Fixture> fx = [] {
    auto f = std::make_unique<Fixture>();
    auto g = GgufFile::open(test::model_path("stories260K.gguf"));
    if (!g.is_ok()) throw std::runtime_error(g.status().to_string());
    auto v = Vocab::from_gguf(**g);
    if (!v.is_ok()) throw std::runtime_error(v.status().to_string());
    f->vocab = std::make_unique<Vocab>(std::move(v).value());
    f->chat = ChatTemplate::choose("chatml", "").value();
    f->rc.vocab = f->vocab.get();
    f->rc.n_vocab = f->vocab->n_tokens();
    f->rc.n_ctx_slot = 256;
    f->rc.n_slots = 2;
    f->rc.max_token_bytes = 16;
    f->rc.chat = &f->chat;
    return f;
  }();
  return *fx;
}

std::optional<ApiError> parse(const std::string& body, ApiFlavor flavor) {
  auto j = parse_json_body(body);
  if (!j.is_ok()) throw std::runtime_error(j.status().to_string());
  CompletionRequest cr;
  return parse_completion_request(*j, flavor, fixture().rc, &cr);
}

// Issue 6 (found by fuzz_http_json): a "type" that is not a string, in response_format or in a
// chat content part, made json::value() throw: the route answered 500 instead of 400.
TEST(RequestParams, Issue6NonStringTypeFieldsAreInvalidRequestsNotExceptions) {
  for (const char* body : {R"({"prompt":"x","response_format":{"type":5}})", R"({"prompt":"x","response_format":{"type":["text"]}})",
                           R"({"prompt":"x","response_format":{"type":"json_object"}})"}) {
    SCOPED_TRACE(body);
    auto e = parse(body, ApiFlavor::Llama);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(error_status(*e), 400);
    EXPECT_EQ(e->message, "'response_format' other than {\"type\":\"text\"} is not supported by this server");
  }
  for (const char* body : {R"({"messages":[{"role":"user","content":[{"type":1,"text":"x"}]}]})",
                           R"({"messages":[{"role":"user","content":[{"type":{"a":1},"text":"x"}]}]})",
                           R"({"messages":[{"role":"user","content":[{"text":"x"}]}]})",
                           R"({"messages":[{"role":"user","content":[{"type":"text","text":7}]}]})"}) {
    SCOPED_TRACE(body);
    auto e = parse(body, ApiFlavor::OaiChat);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(error_status(*e), 400);
    EXPECT_EQ(e->message, "only text content parts ({\"type\":\"text\",\"text\":...}) are supported");
  }
  // The accepted spellings still parse.
  EXPECT_FALSE(parse(R"({"prompt":"x","response_format":{"type":"text"}})", ApiFlavor::Llama).has_value());
  EXPECT_FALSE(parse(R"({"prompt":"x","response_format":{}})", ApiFlavor::Llama).has_value());
  EXPECT_FALSE(parse(R"({"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]})", ApiFlavor::OaiChat).has_value());
}

}  // namespace
}  // namespace kvstash
