// Token sampling: repetition penalty -> top_k -> top_p -> min_p -> temperature -> seeded draw.
// Owns: one sequence's sampling parameters, its accepted-token history and its RNG state.
// Never allocates after construction, never modifies the caller's logits, never reads the model.
// Not thread-safe: one Sampler per sequence; sample()/accept()/top_probs() mutate scratch state.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "core/status.h"

namespace kvstash {

// Seed value that asks for a fresh seed from std::random_device (like LLAMA_DEFAULT_SEED).
inline constexpr uint64_t kSamplerRandomSeed = 0xFFFFFFFFull;
// repeat_last_n == -1 ("whole history") keeps at most this many tokens: the last 128Ki accepted
// tokens (512 KiB per sampler). A positive repeat_last_n may not exceed it either.
inline constexpr int32_t kSamplerMaxHistoryTokens = 1 << 17;

struct SamplerParams {
  float temperature = 0.8f;     // <= 0: greedy argmax of the penalised logits (ties -> lowest id)
  int32_t top_k = 40;           // <= 0: disabled; >= n_vocab keeps everything
  float top_p = 0.95f;          // >= 1: disabled; must be >= 0
  float min_p = 0.05f;          // <= 0: disabled; must be <= 1
  float repeat_penalty = 1.0f;  // 1: disabled; must be finite and > 0 (logit > 0 ? l / p : l * p)
  int32_t repeat_last_n = 64;   // tokens the penalty looks back over; 0 disables, -1 = whole
                                // history (bounded by kSamplerMaxHistoryTokens)
  uint64_t seed = kSamplerRandomSeed;  // kSamplerRandomSeed: draw one from std::random_device
};

// InvalidArgument naming the field for NaN/inf or out-of-range values; Ok otherwise.
// Parameters arrive from users (server requests, CLI flags): call this before building a Sampler.
[[nodiscard]] Status validate(const SamplerParams& p);

// Maps one 64-bit RNG output to a double in [0, 1): (x >> 11) * 2^-53. Exact and identical on
// every platform (unlike std::uniform_real_distribution, whose algorithm is unspecified).
inline double rng_to_unit(uint64_t x) { return static_cast<double>(x >> 11) * 0x1.0p-53; }

// Sampler. Determinism contract: the RNG is std::mt19937_64 seeded with seed(), whose output
// sequence is fixed by the C++ standard; each non-greedy sample() consumes exactly one output,
// converted with rng_to_unit(); sorting uses a total order (logit desc, id asc). Same seed + same
// logits + same accept() calls => same tokens. (Probabilities go through std::exp, so a draw that
// lands within an ulp of a bucket edge may differ on a libm that rounds exp differently.)
// NaN logits are treated as -inf.
class Sampler {
 public:
  // Precondition (asserted): validate(p) is ok and n_vocab > 0. Input from users goes via create().
  // Allocates all scratch here (n_vocab-sized candidates + marks, the history ring buffer).
  Sampler(const SamplerParams& p, int32_t n_vocab);
  // Validating factory: InvalidArgument for bad params or n_vocab <= 0.
  [[nodiscard]] static Result<Sampler> create(const SamplerParams& p, int32_t n_vocab);
  // Movable, not copyable: a copy would duplicate n_vocab-sized scratch and the RNG stream.
  Sampler(Sampler&&) = default;
  Sampler& operator=(Sampler&&) = default;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Picks the next token from raw logits [n_vocab]. Chain (llama.cpp's default order): repetition
  // penalty over the last repeat_last_n accepted tokens -> top_k -> top_p -> min_p ->
  // temperature -> softmax -> one draw. top_p and min_p act on the softmax of the (penalised,
  // unscaled) logits of the candidates still present. Greedy (temperature <= 0) returns the argmax
  // of the penalised logits and consumes no RNG output. Does not modify `logits`; does not call
  // accept() (the caller decides which tokens enter the history). O(n_vocab + window) plus the
  // sort of the survivors (a full sort when top_p is active without top_k).
  int32_t sample(const float* logits);

  // Appends `token` (precondition: 0 <= token < n_vocab; asserted, ignored if violated in release)
  // to the history. The ring buffer holds repeat_last_n tokens (kSamplerMaxHistoryTokens for -1,
  // none for 0); older tokens fall out of the penalty window.
  void accept(int32_t token);

  // Clears the history and re-seeds the RNG with seed(): the next samples repeat the first ones.
  void reset();

  // The effective seed (the random one when kSamplerRandomSeed was given; never equal to it).
  uint64_t seed() const { return seed_; }
  int32_t n_vocab() const { return n_vocab_; }
  const SamplerParams& params() const { return params_; }

  // Writes logits [n_vocab] with the repetition penalty applied into out [n_vocab]: what the
  // truncation steps (and greedy) see. Each distinct token in the window is penalised once.
  // Non-const: it uses the sampler's scratch.
  void penalised_logits(const float* logits, float* out);

  // The final distribution of sample() without drawing (no RNG use): fills ids[0..count) and
  // probs[0..count) with the min(n, survivors) most probable candidates, probabilities descending
  // (ties by higher logit, then lower id), and returns count. The probabilities are those the draw
  // would use: they sum to 1 over all survivors and to <= 1 over the returned ones. Greedy: the
  // softmax of the penalised logits at temperature 1 over the whole vocabulary, untruncated
  // (ids[0] is what sample() returns). ids and probs must hold n entries. n <= 0 returns 0.
  int32_t top_probs(const float* logits, int32_t n, int32_t* ids, float* probs);

 private:
  struct Candidate {
    int32_t id;
    float logit;
    float p;
  };

  // Fills cands_[0..n_vocab) from logits with the penalty applied (id order).
  void load_candidates(const float* logits);
  // Runs top_k -> top_p -> min_p -> temperature -> softmax on cands_; returns the survivor count.
  // Leaves cands_[0..count).p normalised; *sorted says whether they are in (logit desc, id asc).
  int32_t run_chain(bool* sorted);
  int32_t argmax_candidate() const;  // index into cands_ over all n_vocab entries

  SamplerParams params_;
  int32_t n_vocab_ = 0;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::vector<Candidate> cands_;   // [n_vocab] scratch
  std::vector<uint8_t> seen_;      // [n_vocab] penalty marks, all zero between calls
  std::vector<int32_t> history_;   // ring buffer [history capacity]
  int32_t history_next_ = 0;       // slot the next accept() writes
  int32_t history_len_ = 0;        // valid entries, <= history_.size()
};

}  // namespace kvstash
