// libFuzzer target: HTTP request bodies, parsed and validated as the routes do it
// (parse_json_body, then the endpoint's parser). Input: one selector byte, then the body.
//   bits 0-2: endpoint: 0 /completion, 1 /v1/completions, 2 /v1/chat/completions, 3 /tokenize,
//             4 /detokenize, 5 /slots/{id}?action=save|restore (filename -> SlotDir::resolve),
//             6 /slots/saved/{name}?action=rename (the new name), 7 /v1/chat/completions on a
//             model whose chat template is unrecognized
//   bits 3-6: the chat format of the server (mod 12)
// The vocabulary is fuzz_support's tiny SPM vocabulary (control, byte and merged tokens).
// Invariants: nothing throws (every parser is documented never to); a parsed body dumps and
// parses back to itself; an error has a message and a 4xx/5xx status whose envelope
// serialises; an accepted request satisfies every bound docs/api.md states (prompt ids in
// range, prompts non-empty and shorter than the slot context, n_predict, n_probs, stop strings,
// id_slot, sampler parameters); a filename that resolves is a valid name directly inside the
// slot directory, and an invalid name never resolves.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "fuzz_support.h"
#include "gguf/gguf_reader.h"
#include "server/json_io.h"
#include "server/request_params.h"
#include "server/slot_files.h"

using namespace kvstash;
using json = nlohmann::json;

namespace {

constexpr int32_t kCtxSlot = 64;
constexpr int32_t kSlots = 4;

struct Fixture {
  std::unique_ptr<Vocab> vocab;
  std::vector<ChatTemplate> templates;  // one per built-in format
  std::optional<ChatTemplate> unrecognized;
  SlotDir slots;
  std::string slot_dir;
  size_t max_token_bytes = 1;
};

void remove_slot_dir();

Fixture& fixture() {
  static Fixture* fx = [] {
    auto* f = new Fixture;
    const std::vector<uint8_t> bytes = fuzz::tiny_vocab_gguf();
    auto g = GgufFile::from_buffer(bytes.data(), bytes.size());
    FUZZ_CHECK(g.is_ok(), g.status().to_string());
    auto v = Vocab::from_gguf(**g);
    FUZZ_CHECK(v.is_ok(), v.status().to_string());
    f->vocab = std::make_unique<Vocab>(std::move(v).value());
    for (int32_t id = 0; id < f->vocab->n_tokens(); ++id) f->max_token_bytes = std::max(f->max_token_bytes, f->vocab->token_text(id).size());
    for (const std::string& name : {"chatml", "llama2", "llama2-sys", "llama3", "deepseek", "deepseek2", "deepseek3", "mistral-v1",
                                    "mistral-v3", "mistral-v7", "gemma", "zephyr"}) {
      auto t = ChatTemplate::choose(name, "");
      FUZZ_CHECK(t.is_ok(), t.status().to_string());
      f->templates.push_back(std::move(t).value());
    }
    auto odd = ChatTemplate::choose("", "{{ messages | tojson }}");
    FUZZ_CHECK(odd.is_ok() && odd->status() == ChatTemplateStatus::Unrecognized, "the unrecognized template fixture");
    f->unrecognized = std::move(odd).value();
    // A slot directory holding a state file, a subdirectory and links in and out of it.
    namespace fs = std::filesystem;
    f->slot_dir = (fs::temp_directory_path() / ("kvstash-fuzz-slots-" + std::to_string(::getpid()))).string();
    auto d = SlotDir::open(f->slot_dir, nullptr);
    FUZZ_CHECK(d.is_ok(), d.status().to_string());
    f->slots = std::move(d).value();
    std::ofstream(f->slots.path() + "/a.bin") << "x";
    std::error_code ec;
    fs::create_directory(f->slots.path() + "/sub", ec);
    fs::create_symlink("/", f->slots.path() + "/out", ec);
    fs::create_symlink("a.bin", f->slots.path() + "/in", ec);
    fs::create_symlink("missing.bin", f->slots.path() + "/dangling", ec);
    std::atexit(remove_slot_dir);
    return f;
  }();
  return *fx;
}

void remove_slot_dir() {
  std::error_code ec;
  std::filesystem::remove_all(fixture().slot_dir, ec);
}

void check_error(const ApiError& e) {
  FUZZ_CHECK(!e.message.empty(), "an error without a message");
  const int status = error_status(e);
  FUZZ_CHECK(status >= 400 && status < 600, "error status " + std::to_string(status));
  auto back = parse_json_body(dump_json(error_body(e)));
  FUZZ_CHECK(back.is_ok() && (*back)["error"]["code"] == status, "the error envelope does not serialise");
}

void check_completion(const CompletionRequest& r, ApiFlavor flavor, const RequestContext& rc) {
  FUZZ_CHECK(!r.prompts.empty() && r.prompts.size() <= kMaxPrompts, std::to_string(r.prompts.size()) + " prompts");
  FUZZ_CHECK(flavor != ApiFlavor::OaiChat || r.prompts.size() == 1, "a chat request with several prompts");
  FUZZ_CHECK(!r.stream || r.prompts.size() == 1, "a streamed request with several prompts");
  for (const auto& p : r.prompts) {
    FUZZ_CHECK(!p.empty() && p.size() < size_t(rc.n_ctx_slot), "a prompt of " + std::to_string(p.size()) + " tokens");
    for (int32_t id : p) FUZZ_CHECK(id >= 0 && id < rc.n_vocab, "prompt token " + std::to_string(id));
  }
  const GenRequest& g = r.gen;
  FUZZ_CHECK(g.n_predict >= -1 && g.n_predict <= kMaxNPredict, "n_predict " + std::to_string(g.n_predict));
  FUZZ_CHECK(g.n_probs >= 0 && g.n_probs <= std::min(kMaxNProbs, rc.n_vocab), "n_probs " + std::to_string(g.n_probs));
  FUZZ_CHECK(g.id_slot >= -1 && g.id_slot < rc.n_slots, "id_slot " + std::to_string(g.id_slot));
  FUZZ_CHECK(g.stop.size() <= kMaxStopStrings, std::to_string(g.stop.size()) + " stop strings");
  for (const auto& s : g.stop) FUZZ_CHECK(s.size() <= kMaxStopBytes, "a stop string of " + std::to_string(s.size()) + " bytes");
  FUZZ_CHECK(validate(g.sampling).is_ok(), "sampler parameters: " + validate(g.sampling).to_string());
  FUZZ_CHECK(g.sampling.top_k >= 0, "top_k " + std::to_string(g.sampling.top_k));
}

void check_filename(const Fixture& fx, const std::string& name) {
  auto path = fx.slots.resolve(name);
  if (!path.is_ok()) {
    FUZZ_CHECK(path.status().code() == StatusCode::InvalidArgument, path.status().to_string());
    return;
  }
  FUZZ_CHECK(validate_slot_filename(name), "an invalid filename resolved");
  const std::string& dir = fx.slots.path();
  FUZZ_CHECK(path->size() > dir.size() + 1 && path->compare(0, dir.size() + 1, dir + "/") == 0 &&
                 path->find('/', dir.size() + 1) == std::string::npos,
             "'" + name + "' resolved outside the slot directory: " + *path);
}

void run(const uint8_t* data, size_t size) {
  Fixture& fx = fixture();
  const int endpoint = data[0] & 7;
  const ChatTemplate& chat = endpoint == 7 ? *fx.unrecognized : fx.templates[((data[0] >> 3) & 15) % fx.templates.size()];
  RequestContext rc;
  rc.vocab = fx.vocab.get();
  rc.n_vocab = fx.vocab->n_tokens();
  rc.n_ctx_slot = kCtxSlot;
  rc.n_slots = kSlots;
  rc.max_token_bytes = fx.max_token_bytes;
  rc.chat = &chat;

  auto body = parse_json_body(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
  if (!body.is_ok()) {
    FUZZ_CHECK(body.status().code() == StatusCode::InvalidArgument && !body.status().message().empty(), body.status().to_string());
    return;
  }
  auto again = parse_json_body(dump_json(*body));
  FUZZ_CHECK(again.is_ok() && *again == *body, "a parsed body does not dump and parse back to itself");

  switch (endpoint) {
    case 0:
    case 1:
    case 2:
    case 7: {
      const ApiFlavor flavor = endpoint == 0 ? ApiFlavor::Llama : endpoint == 1 ? ApiFlavor::OaiCompletion : ApiFlavor::OaiChat;
      CompletionRequest cr;
      if (auto e = parse_completion_request(*body, flavor, rc, &cr)) return check_error(*e);
      FUZZ_CHECK(endpoint != 7, "a chat request passed with an unrecognized template");
      check_completion(cr, flavor, rc);
      return;
    }
    case 3: {
      TokenizeRequest tr;
      if (auto e = parse_tokenize_request(*body, &tr)) return check_error(*e);
      FUZZ_CHECK((*body)["content"].get<std::string>() == tr.content, "tokenize content");
      return;
    }
    case 4: {
      std::vector<int32_t> ids;
      if (auto e = parse_detokenize_request(*body, rc.n_vocab, &ids)) return check_error(*e);
      for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < rc.n_vocab, "detokenize id " + std::to_string(id));
      return;
    }
    case 5:
    case 6: {
      std::string name;
      if (auto e = parse_required_string(*body, "filename", &name)) return check_error(*e);
      check_filename(fx, name);
      return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  try {
    run(data, size);
  } catch (const std::exception& e) {
    fuzz::fail(__FILE__, __LINE__, std::string("an exception escaped a parser that never throws: ") + e.what());
  }
  return 0;
}
