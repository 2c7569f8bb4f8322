#include "model/model.h"

#include <sys/mman.h>

#include <cstdlib>
#include <thread>

namespace kvstash {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Deepseek2: return "deepseek2";
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
  } else if (arch == "deepseek2") {
    m->arch_ = Arch::Deepseek2;
    KV_RETURN_IF_ERROR(m->load_deepseek2());
  } else {
    return unsupported("model: architecture '" + arch + "' is not supported (supported: llama, deepseek2)");
  }
  m->repack_weights();
  return m;
}

void Model::repack_weights() {
  std::vector<MatRef*> mats;
  for (LlamaLayer& L : layers_)
    for (MatRef* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) mats.push_back(w);
  for (Deepseek2Layer& L : ds2_layers_) {
    for (MatRef* w : {&L.wq, &L.wq_a, &L.wq_b, &L.wkv_a, &L.wo, &L.w_gate, &L.w_up, &L.w_down, &L.gate_inp, &L.gate_shexp,
                      &L.up_shexp, &L.down_shexp})
      mats.push_back(w);
    for (auto* v : {&L.k_b, &L.k_dec, &L.v_b, &L.gate_exps, &L.up_exps, &L.down_exps})
      for (MatRef& w : *v) mats.push_back(&w);
  }
  if (output_.data != tok_embd_.data) mats.push_back(&output_);  // a tied output stays row-major with token_embd
  std::erase_if(mats, [](const MatRef* w) { return w->layout != WeightLayout::RowMajor || !can_interleave8(w->type, w->n_rows); });
  std::vector<size_t> offs;
  size_t total = 0;
  for (const MatRef* w : mats) {
    offs.push_back(total);
    total += (size_t(w->n_rows) * w->row_bytes + 63) / 64 * 64;
  }
  if (total == 0) return;
  // One 2 MiB-aligned buffer, advised to use huge pages: ~500x fewer page faults while it is
  // filled (the copy is bound by faults, not bytes) and fewer TLB misses while decoding.
  constexpr size_t kHuge = size_t(2) << 20;
  total = (total + kHuge - 1) / kHuge * kHuge;
  repacked_.reset(static_cast<uint8_t*>(std::aligned_alloc(kHuge, total)));
  if (!repacked_) return;  // out of memory: keep every matrix a row-major view of the mapping
  (void)madvise(repacked_.get(), total, MADV_HUGEPAGE);
  // Matrices are independent: split them over threads (round robin; they come in similar sizes).
  const unsigned n_thr = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 8));
  std::vector<std::thread> th;
  for (unsigned t = 0; t < n_thr; ++t)
    th.emplace_back([&, t] {
      for (size_t i = t; i < mats.size(); i += n_thr) {
        MatRef* w = mats[i];
        uint8_t* dst = repacked_.get() + offs[i];
        repack_interleaved8(w->type, w->data, w->n_rows, w->n_cols, dst);
        file_->release_pages(w->data, size_t(w->n_rows) * w->row_bytes);
        w->data = dst;
        w->layout = WeightLayout::Interleaved8;
      }
    });
  for (auto& x : th) x.join();
}

Result<KvLayout> Model::kv_layout(uint32_t n_cells, DType type_k, DType type_v) const {
  switch (arch_) {
    case Arch::Llama: return kv_layout_llama(n_cells, type_k, type_v);
    case Arch::Deepseek2: return kv_layout_deepseek2(n_cells, type_k);
  }
  return internal_error("model: unknown architecture");
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
  // (unless it doubles as the output matrix), and routed experts, of which n_expert_used of
  // n_expert are read. deepseek2 counts its default (absorbed) MLA path: it reads k_b, whether
  // in the file or derived at load, and not the latent -> k_nope matrices (k_dec).
  uint64_t n = weight_bytes() + derived_bytes_;
  for (const Deepseek2Layer& L : ds2_layers_)
    for (const MatRef& m : L.k_dec) n -= static_cast<uint64_t>(m.n_rows) * m.row_bytes;
  const GgufTensorInfo* emb = file_->find_tensor("token_embd.weight");
  if (emb && output_.data != emb->data) n -= emb->n_bytes - emb->row_bytes();
  if (hp_.n_expert > 0) {
    for (const auto& t : file_->tensors()) {
      const std::string_view nm = t.name;
      if (nm.size() > 12 && nm.substr(nm.size() - 12) == "_exps.weight")
        n -= t.n_bytes - t.n_bytes / hp_.n_expert * hp_.n_expert_used;
    }
  }
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
    if (arch_ == Arch::Deepseek2) {  // appended only here, so llama hashes (and old files) are unchanged
      for (uint32_t v : {hp_.n_lora_q, hp_.n_lora_kv, hp_.head_dim_v, hp_.n_layer_dense_lead, hp_.n_expert, hp_.n_expert_used,
                         hp_.n_expert_shared, hp_.n_ff_exp, hp_.n_expert_groups, hp_.n_expert_groups_used, hp_.rope_n_ctx_orig,
                         static_cast<uint32_t>(hp_.expert_gating), static_cast<uint32_t>(hp_.rope_scaling), uint32_t(hp_.expert_weights_norm)})
        h.u32(v);
      for (float v : {hp_.rope_freq_scale, hp_.yarn_log_mul, hp_.yarn_beta_fast, hp_.yarn_beta_slow, hp_.expert_weights_scale}) h.put<float>(v);
    }
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
