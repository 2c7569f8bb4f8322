// libFuzzer target: GGUF files, from the reader (GgufFile::from_buffer, the same parser as
// GgufFile::open) through every consumer of its output: the vocabulary loader, the model
// loaders (llama, deepseek2), the cache layout and, for a file that loads, one forward pass.
// Invariants: a refused file has a message; an accepted directory only points inside the input;
// a file that parses once parses again; a model that loads can build its cache and decode.
#include <cstring>

#include "engine/context.h"
#include "fuzz_support.h"
#include "gguf/gguf_reader.h"
#include "model/model.h"

using namespace kvstash;

namespace {

void check_directory(const GgufFile& f, const uint8_t* data, size_t size) {
  FUZZ_CHECK(f.data_offset() <= size || f.tensors().empty(), "data section starts past the end");
  for (const GgufTensorInfo& t : f.tensors()) {
    FUZZ_CHECK(t.data >= data + f.data_offset() && t.n_bytes <= size && t.data - data <= ptrdiff_t(size - t.n_bytes),
               "tensor '" + t.name + "' points outside the input");
    FUZZ_CHECK(t.n_bytes == dtype_row_bytes(t.type, t.ne[0]) * t.n_rows(), "tensor '" + t.name + "' byte size");
    FUZZ_CHECK(f.find_tensor(t.name) == &t, "tensor '" + t.name + "' is not found by name");
  }
  for (const auto& [key, v] : f.metadata()) {
    FUZZ_CHECK(f.find(key) == &v, "key '" + key + "' is not found by name");
    (void)v.to_display();
    // Typed accessors answer a value or an error for every key, never anything else.
    (void)f.get_string(key);
    (void)f.get_u64(key);
    (void)f.get_f64(key);
    (void)f.get_bool(key);
    if (v.type == GgufType::ARRAY) {
      auto a = f.get_array(key, v.elem_type);
      FUZZ_CHECK(a.is_ok() && *a == &v, "array '" + key + "' is not found as an array of its own type");
    }
  }
}

void check_vocab(const Vocab& v) {
  for (bool parse_special : {false, true}) {
    const std::vector<int32_t> ids = v.tokenize("Hello world <s></s> \xc3\xa9t\xc3\xa9 \xff\n", true, parse_special);
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < v.n_tokens(), "token id " + std::to_string(id) + " out of range");
    (void)v.detokenize(ids, true);
  }
  for (int32_t id = 0; id < v.n_tokens(); ++id) (void)v.token_to_piece(id, true);
}

void check_model(const Model& m) {
  const Hparams& hp = m.hparams();
  FUZZ_CHECK(hp.n_vocab == uint32_t(m.vocab().n_tokens()), "n_vocab differs from the vocabulary");
  (void)m.fingerprint();
  (void)m.weight_bytes_per_token();
  for (DType t : {DType::F16, DType::Q8_0, DType::Q8_KV}) {
    auto layout = m.kv_layout(4, t, t);
    if (layout.is_ok()) FUZZ_CHECK(layout->n_layers() == hp.n_layer, "cache layout layer count");
  }
  // A model that loads must run: decode two tokens, then one more over the cached rows.
  ContextParams cp;
  cp.n_ctx = 4;
  cp.n_batch = 2;
  cp.n_ubatch = 2;
  cp.n_threads = 1;
  cp.type_k = cp.type_v = DType::F32;
  auto ctx = Context::create(m, cp);
  FUZZ_CHECK(ctx.is_ok(), "a loaded model cannot get a context: " + ctx.status().to_string());
  const int32_t toks[3] = {0, static_cast<int32_t>(hp.n_vocab - 1), static_cast<int32_t>(hp.n_vocab / 2)};
  auto a = (*ctx)->eval(0, toks, 2, 0);
  FUZZ_CHECK(a.is_ok(), "decode failed: " + a.status().to_string());
  auto b = (*ctx)->eval(0, toks + 2, 1, 2);
  FUZZ_CHECK(b.is_ok(), "decode failed: " + b.status().to_string());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = GgufFile::from_buffer(data, size);
  if (!f.is_ok()) {
    FUZZ_CHECK(!f.status().message().empty(), "an error without a message");
    return 0;
  }
  check_directory(**f, data, size);

  auto v = Vocab::from_gguf(**f);
  if (v.is_ok()) check_vocab(*v);

  auto again = GgufFile::from_buffer(data, size);
  FUZZ_CHECK(again.is_ok(), "the second parse of the same bytes failed: " + again.status().to_string());
  auto m = Model::from_gguf(std::move(again).value());
  if (!m.is_ok()) return 0;
  FUZZ_CHECK(v.is_ok(), "a model loaded with a vocabulary that does not: " + v.status().to_string());
  check_model(**m);
  return 0;
}
