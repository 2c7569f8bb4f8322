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

// ---- fingerprint ----
#include <xxhash.h>

#include <thread>

#include "state/state_encoding.h"

namespace kvstash {

const ModelFingerprint& Model::fingerprint() const {
  std::call_once(fp_once_, [this] {
    ModelFingerprint fp;
    fp.arch = arch_name(arch_);
    fp.name = name_;
    fp.n_vocab = hp_.n_vocab;
    Enc h;
    h.str(fp.arch);
    for (uint32_t v : {hp_.n_vocab, hp_.n_embd, hp_.n_layer, hp_.n_head, hp_.n_head_kv, hp_.head_dim, hp_.n_rot, hp_.n_ff, hp_.n_ctx_train}) h.u32(v);
    h.put<float>(hp_.rope_freq_base);
    h.put<float>(hp_.rms_eps);
    fp.hparams_hash = XXH3_64bits(h.b.data(), h.b.size());

    const Vocab& v = *vocab_;
    XXH3_state_t* st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (int32_t id = 0; id < v.n_tokens(); ++id) {
      Enc e;
      e.str(v.token_text(id));
      e.put<float>(v.token_score(id));
      e.i32(static_cast<int32_t>(v.token_type(id)));
      XXH3_64bits_update(st, e.b.data(), e.b.size());
    }
    Enc sp;
    for (int32_t id : {v.bos_id(), v.eos_id(), v.unk_id()}) sp.i32(id);
    sp.u8(v.add_bos());
    sp.u8(v.add_eos());
    XXH3_64bits_update(st, sp.b.data(), sp.b.size());
    fp.tokenizer_hash = XXH3_64bits_digest(st);

    XXH3_64bits_reset(st);
    for (const auto& t : file_->tensors()) {
      Enc e;
      e.str(t.name);
      e.u32(static_cast<uint32_t>(t.type));
      for (uint64_t d : t.ne) e.u64(d);
      XXH3_64bits_update(st, e.b.data(), e.b.size());
    }
    fp.tensors_hash = XXH3_64bits_digest(st);
    XXH3_freeState(st);

    // Weights: one hash per tensor, in parallel, then a hash of those.
    const auto& ts = file_->tensors();
    std::vector<uint64_t> per(ts.size());
    const unsigned n_thr = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 8));
    std::vector<std::thread> th;
    for (unsigned t = 0; t < n_thr; ++t)
      th.emplace_back([&, t] {
        for (size_t i = t; i < ts.size(); i += n_thr) per[i] = XXH3_64bits(ts[i].data, ts[i].n_bytes);
      });
    for (auto& x : th) x.join();
    fp.weights_hash = XXH3_64bits(per.data(), per.size() * sizeof(uint64_t));
    fp_ = std::move(fp);
  });
  return fp_;
}

}  // namespace kvstash
