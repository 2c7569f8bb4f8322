// Per-architecture entry points behind the dispatchers of model/forward.h (forward.cpp).
// Internal to src/model: the engine calls forward(), forward_scratch_init() and apply_k_shift().
// Each architecture file (arch_<name>.cpp) defines its three functions; contracts as in forward.h.
#pragma once

#include "model/forward.h"

namespace kvstash {

void forward_scratch_init_llama(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s);
void forward_llama(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s, const UBatch& ub,
                   float* logits);
void apply_k_shift_llama(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s);

void forward_scratch_init_deepseek2(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s);
void forward_deepseek2(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                       const UBatch& ub, float* logits);
void apply_k_shift_deepseek2(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s);

}  // namespace kvstash
