#include "model/model.h"

namespace kvstash {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
  }
  return "?";
}

Result<std::unique_ptr<Model>> Model::load(const std::string& path) {
  KV_ASSIGN_OR_RETURN(auto file, GgufFile::open(path));
  return from_gguf(std::move(file));
}

Result<std::unique_ptr<Model>> Model::from_gguf(std::unique_ptr<GgufFile> file) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  KV_ASSIGN_OR_RETURN(std::string arch, m->file_->get_string("general.architecture"));
  auto nm = m->file_->get_string("general.name");
  m->name_ = nm.is_ok() ? nm.value() : arch;
  KV_ASSIGN_OR_RETURN(Vocab vocab, Vocab::from_gguf(*m->file_));
  m->vocab_.emplace(std::move(vocab));
  if (arch == "llama") {
    m->arch_ = Arch::Llama;
    KV_RETURN_IF_ERROR(m->load_llama());
  } else {
    return unsupported("model: architecture '" + arch + "' is not supported (supported: llama)");
  }
  return m;
}

uint64_t Model::n_params() const {
  uint64_t n = 0;
  for (const auto& t : file_->tensors()) n += t.n_elems();
  return n;
}

uint64_t Model::weight_bytes() const {
  uint64_t n = 0;
  for (const auto& t : file_->tensors()) n += t.n_bytes;
  return n;
}

uint64_t Model::weight_bytes_per_token() const {
  // Every tensor is read once per token, except the embedding table, of which one row is read
  // (unless it doubles as the output matrix).
  uint64_t n = weight_bytes();
  const GgufTensorInfo* emb = file_->find_tensor("token_embd.weight");
  if (emb && output_.data != emb->data) n -= emb->n_bytes - emb->row_bytes();
  return n;
}

}  // namespace kvstash
