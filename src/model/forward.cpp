// Dispatch of the forward-pass interface (forward.h) to the architecture of the model.
#include "model/arch_forward.h"
#include "model/model.h"

namespace kvstash {

const char* mla_path_name(MlaPath p) {
  switch (p) {
    case MlaPath::Absorbed: return "absorbed";
    case MlaPath::Naive: return "naive";
  }
  return "?";
}

void forward_scratch_init(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s, MlaPath mla_path) {
  s->mla_path = mla_path;
  switch (model.arch()) {
    case Arch::Llama: forward_scratch_init_llama(model, n_ub, n_cells, n_threads, s); return;
    case Arch::Deepseek2: forward_scratch_init_deepseek2(model, n_ub, n_cells, n_threads, s); return;
  }
}

void forward(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s, const UBatch& ub,
             float* logits) {
  switch (model.arch()) {
    case Arch::Llama: forward_llama(model, cache, pool, k, s, ub, logits); return;
    case Arch::Deepseek2: forward_deepseek2(model, cache, pool, k, s, ub, logits); return;
  }
}

void apply_k_shift(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s) {
  switch (model.arch()) {
    case Arch::Llama: apply_k_shift_llama(model, cache, pool, k, s); return;
    case Arch::Deepseek2: apply_k_shift_deepseek2(model, cache, pool, k, s); return;
  }
}

}  // namespace kvstash
