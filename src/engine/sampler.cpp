#include "engine/sampler.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

namespace kvstash {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::string format_float_error(const char* what, float got) {
  char buf[192];
  std::snprintf(buf, sizeof(buf), "sampler: %s, got %g", what, static_cast<double>(got));
  return buf;
}

// Total order (logit desc, id asc): ties never depend on the std::sort implementation.
bool by_logit_desc(const auto& a, const auto& b) {
  if (a.logit != b.logit) return a.logit > b.logit;
  return a.id < b.id;
}

// Order of top_probs(): probability desc, then logit desc (p can tie where logits differ, e.g.
// both underflow to 0), then id asc.
bool by_p_desc(const auto& a, const auto& b) {
  if (a.p != b.p) return a.p > b.p;
  return by_logit_desc(a, b);
}

// A seed from std::random_device, never equal to kSamplerRandomSeed (so seed() can be fed back
// to reproduce a run). random_device may throw where no entropy source exists: fall back to the
// clock rather than let an exception leave the module.
uint64_t draw_random_seed() {
  uint64_t s = kSamplerRandomSeed;
  try {
    std::random_device rd;
    while (s == kSamplerRandomSeed) {
      const uint64_t hi = rd();
      const uint64_t lo = rd();
      s = (hi << 32) | lo;
    }
  } catch (...) {
    s = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) *
        0x9E3779B97F4A7C15ull;
    if (s == kSamplerRandomSeed) s ^= 1;
  }
  return s;
}

int32_t history_capacity(int32_t repeat_last_n) {
  if (repeat_last_n == -1) return kSamplerMaxHistoryTokens;
  if (repeat_last_n <= 0) return 0;
  return std::min(repeat_last_n, kSamplerMaxHistoryTokens);
}

}  // namespace

Status validate(const SamplerParams& p) {
  if (!std::isfinite(p.temperature)) {
    return invalid_argument(
        format_float_error("temperature must be finite (<= 0: greedy)", p.temperature));
  }
  if (std::isnan(p.top_p) || p.top_p < 0.0f) {
    return invalid_argument(format_float_error("top_p must be >= 0 (>= 1 disables)", p.top_p));
  }
  if (std::isnan(p.min_p) || p.min_p > 1.0f) {
    return invalid_argument(format_float_error("min_p must be <= 1 (<= 0 disables)", p.min_p));
  }
  if (!std::isfinite(p.repeat_penalty) || p.repeat_penalty <= 0.0f) {
    return invalid_argument(
        format_float_error("repeat_penalty must be finite and > 0 (1 disables)", p.repeat_penalty));
  }
  if (p.repeat_last_n < -1 || p.repeat_last_n > kSamplerMaxHistoryTokens) {
    return invalid_argument("sampler: repeat_last_n must be in [-1, " +
                            std::to_string(kSamplerMaxHistoryTokens) + "], got " +
                            std::to_string(p.repeat_last_n));
  }
  return Status::ok();
}

Sampler::Sampler(const SamplerParams& p, int32_t n_vocab)
    : params_(p),
      n_vocab_(n_vocab),
      seed_(p.seed == kSamplerRandomSeed ? draw_random_seed() : p.seed),
      rng_(seed_),
      cands_(static_cast<size_t>(std::max(n_vocab, 1))),
      seen_(static_cast<size_t>(std::max(n_vocab, 1)), 0),
      history_(static_cast<size_t>(history_capacity(p.repeat_last_n)), 0) {
  assert(n_vocab > 0 && "Sampler: n_vocab must be > 0 (use Sampler::create for input)");
  assert(validate(p).is_ok() && "Sampler: invalid params (use Sampler::create for input)");
}

Result<Sampler> Sampler::create(const SamplerParams& p, int32_t n_vocab) {
  KV_RETURN_IF_ERROR(validate(p));
  if (n_vocab <= 0) {
    return invalid_argument("sampler: n_vocab must be > 0, got " + std::to_string(n_vocab));
  }
  return Sampler(p, n_vocab);
}

void Sampler::accept(int32_t token) {
  assert(token >= 0 && token < n_vocab_ && "Sampler::accept: token out of vocabulary");
  if (token < 0 || token >= n_vocab_) return;
  const auto cap = static_cast<int32_t>(history_.size());
  if (cap == 0) return;
  history_[static_cast<size_t>(history_next_)] = token;
  history_next_ = history_next_ + 1 == cap ? 0 : history_next_ + 1;
  if (history_len_ < cap) ++history_len_;
}

void Sampler::reset() {
  history_next_ = 0;
  history_len_ = 0;
  rng_.seed(seed_);
}

void Sampler::load_candidates(const float* logits) {
  for (int32_t i = 0; i < n_vocab_; ++i) {
    const float l = logits[i];
    cands_[static_cast<size_t>(i)] = {i, std::isnan(l) ? kNegInf : l, 0.0f};
  }
  const float pen = params_.repeat_penalty;
  if (pen == 1.0f || history_len_ == 0) return;
  // The ring holds exactly the window. Each distinct token is penalised once (llama.cpp), so mark
  // it in seen_ and clear the marks afterwards: O(window), no allocation.
  for (int32_t k = 0; k < history_len_; ++k) {
    const auto t = static_cast<size_t>(history_[static_cast<size_t>(k)]);
    if (seen_[t]) continue;
    seen_[t] = 1;
    float& l = cands_[t].logit;
    l = l > 0.0f ? l / pen : l * pen;
  }
  for (int32_t k = 0; k < history_len_; ++k) {
    seen_[static_cast<size_t>(history_[static_cast<size_t>(k)])] = 0;
  }
}

void Sampler::penalised_logits(const float* logits, float* out) {
  load_candidates(logits);
  for (int32_t i = 0; i < n_vocab_; ++i) out[i] = cands_[static_cast<size_t>(i)].logit;
}

namespace {

// Normalised softmax of c[0..n).logit into c[0..n).p. The maximum contributes exactly 1 (so
// +inf and all -inf logits stay well defined); the sum runs in double, in index order.
template <typename C>
void softmax(C* c, int32_t n) {
  float mx = kNegInf;
  for (int32_t i = 0; i < n; ++i) mx = std::max(mx, c[i].logit);
  double sum = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    const float e = c[i].logit == mx ? 1.0f : std::exp(c[i].logit - mx);
    c[i].p = e;
    sum += e;
  }
  for (int32_t i = 0; i < n; ++i) c[i].p = static_cast<float>(c[i].p / sum);
}

}  // namespace

int32_t Sampler::run_chain(bool* sorted) {
  Candidate* c = cands_.data();
  int32_t n = n_vocab_;
  bool is_sorted = false;
  auto cmp = [](const Candidate& a, const Candidate& b) { return by_logit_desc(a, b); };

  // top_k: O(n) selection, then sort only the k survivors.
  if (params_.top_k > 0 && params_.top_k < n) {
    const int32_t k = params_.top_k;
    std::nth_element(c, c + k, c + n, cmp);
    std::sort(c, c + k, cmp);
    n = k;
    is_sorted = true;
  }

  // top_p: smallest probability-sorted prefix whose cumulative probability reaches top_p.
  if (params_.top_p < 1.0f) {
    if (!is_sorted) {
      std::sort(c, c + n, cmp);
      is_sorted = true;
    }
    softmax(c, n);
    double cum = 0.0;
    int32_t keep = n;
    for (int32_t i = 0; i < n; ++i) {
      cum += c[i].p;
      if (cum >= static_cast<double>(params_.top_p)) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }

  // min_p: keep p >= min_p * max p over the candidates present now. The maximum always passes
  // (min_p <= 1 by validate()), so at least one token survives. Order is preserved.
  if (params_.min_p > 0.0f) {
    softmax(c, n);
    float p_max = 0.0f;
    for (int32_t i = 0; i < n; ++i) p_max = std::max(p_max, c[i].p);
    const float threshold = params_.min_p * p_max;
    int32_t keep = 0;
    for (int32_t i = 0; i < n; ++i) {
      if (c[i].p >= threshold) c[keep++] = c[i];
    }
    assert(keep >= 1);
    n = std::max(keep, 1);
  }

  // Temperature after the truncations, then the final softmax.
  const float t = params_.temperature;
  for (int32_t i = 0; i < n; ++i) c[i].logit /= t;
  softmax(c, n);
  *sorted = is_sorted;
  return n;
}

int32_t Sampler::argmax_candidate() const {
  int32_t best = 0;
  for (int32_t i = 1; i < n_vocab_; ++i) {
    if (cands_[static_cast<size_t>(i)].logit > cands_[static_cast<size_t>(best)].logit) best = i;
  }
  return best;  // strict '>' over id order: ties go to the lowest id
}

int32_t Sampler::sample(const float* logits) {
  load_candidates(logits);
  if (params_.temperature <= 0.0f) return cands_[static_cast<size_t>(argmax_candidate())].id;

  bool sorted = false;
  const int32_t n = run_chain(&sorted);
  const Candidate* c = cands_.data();
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) total += c[i].p;
  const double target = rng_to_unit(rng_()) * total;
  double cum = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    cum += c[i].p;
    if (target < cum) return c[i].id;  // cum just grew, so c[i].p > 0
  }
  // Only reachable if u * total rounded up to total: take the last token with mass.
  for (int32_t i = n - 1; i >= 0; --i) {
    if (c[i].p > 0.0f) return c[i].id;
  }
  return c[0].id;
}

int32_t Sampler::top_probs(const float* logits, int32_t n, int32_t* ids, float* probs) {
  if (n <= 0) return 0;
  load_candidates(logits);
  int32_t count = n_vocab_;
  if (params_.temperature <= 0.0f) {
    softmax(cands_.data(), count);
  } else {
    bool sorted = false;
    count = run_chain(&sorted);
  }
  Candidate* c = cands_.data();
  auto cmp = [](const Candidate& a, const Candidate& b) { return by_p_desc(a, b); };
  const int32_t m = std::min(n, count);
  if (m < count) std::nth_element(c, c + m, c + count, cmp);
  std::sort(c, c + m, cmp);
  for (int32_t i = 0; i < m; ++i) {
    ids[i] = c[i].id;
    probs[i] = c[i].p;
  }
  return m;
}

}  // namespace kvstash
