// The forward pass interface shared by architectures: a micro-batch in, K/V rows into the
// cache cells the engine chose, logits out for the tokens that ask for them.
// Owns: ForwardScratch, every buffer a forward pass needs, allocated once per context so the
// decode loop never allocates. Not thread-safe: one forward at a time per scratch.
#pragma once

#include <cstdint>
#include <vector>

#include "core/kernels.h"
#include "core/status.h"
#include "core/threadpool.h"
#include "kv/kv_cache.h"

namespace kvstash {

class Model;

struct UBatch {
  const int32_t* tokens = nullptr;       // [n]
  const int32_t* pos = nullptr;          // [n]
  const SeqId* seq = nullptr;            // [n]
  const uint8_t* want_logits = nullptr;  // [n]; 1 = write this token's logits
  const uint32_t* cells = nullptr;       // [n]; the cache cell each token's K/V goes to (already assigned)
  int32_t n = 0;
};

struct ForwardScratch {
  int32_t n_ub = 0;  // max tokens per micro-batch
  std::vector<float> x, xn, q, k, v, attn, ff_a, ff_b, out;  // activations
  std::vector<uint8_t> acts;                                  // quantized activations
  std::vector<float> rope_cs;                                 // [n_ub, n_rot] cos/sin pairs
  std::vector<float> scores;                                  // [n_threads, n_cells]
  // Query head rows converted to the K row's vec_dot_type (quantized K caches only):
  // [n_threads, q_dot_stride] bytes, one (token, head) at a time per thread.
  std::vector<uint8_t> q_dot;
  size_t q_dot_stride = 0;
  // K-shift: per thread one head row [head_dim] and its rope table [n_rot]: [n_threads, head_dim + n_rot].
  std::vector<float> kshift;
  std::vector<uint32_t> shift_cells;                          // [n_cells] cells with a pending shift
  std::vector<std::vector<uint32_t>> seq_cells;               // [kMaxSeqs] cells sorted by pos
  std::vector<std::vector<int32_t>> seq_pos;                  // [kMaxSeqs] their positions
  std::vector<int32_t> out_rows;                              // rows that want logits
};

// Sizes every buffer for `model`, micro-batches of n_ub tokens, a cache of n_cells, n_threads.
void forward_scratch_init(const Model& model, int32_t n_ub, uint32_t n_cells, int n_threads, ForwardScratch* s);

// Runs the model on ub; logits of the tokens with want_logits, in batch order, go to
// logits [n_out, n_vocab]. Validation of token ids, positions and cells is the caller's.
void forward(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
             const UBatch& ub, float* logits);

// K-shift: rotates the K rows of every non-empty cell with a pending shift (KvCache::seq_add) by
// cache.cell_shift(c) positions, then clears the pending shifts. RoPE rotations compose, so a row
// rotated at position p and then by delta equals (up to rounding) a row rotated at p + delta.
// Rows of every K type are dequantized, rotated in f32 and stored again with store_row (quantized
// types are requantized, which adds one more rounding). V rows are position-free and untouched.
// Cells are independent, so the result does not depend on the thread count.
void apply_k_shift(const Model& model, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s);

}  // namespace kvstash
