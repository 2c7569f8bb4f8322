// Tiled attention calls shared by the architectures: which queries go together (AttnWork), the
// visible key counts, the per-thread scratch, and the dynamic schedule over the pool.
// How queries are grouped never changes a result (core/attention.h: batch invariance).
#include <algorithm>
#include <atomic>

#include "model/arch_forward.h"

namespace kvstash {

void attn_scratch_init(int32_t n_ub, int n_threads, int32_t n_head, int32_t n_head_kv, int32_t head_dim, int32_t v_row_elems,
                       ForwardScratch* s) {
  const size_t nth = size_t(std::max(1, n_threads));
  s->attn_work.clear();
  s->attn_work.reserve(size_t(n_ub) * n_head);  // at most one call per (token, query head)
  s->attn_n_vis.assign(size_t(n_ub), 0);
  const int32_t max_queries = kAttnTokTile * (n_head / n_head_kv);
  s->attn_scratch_stride = (AttnScratchLayout(head_dim, v_row_elems, max_queries).total_bytes + 63) / 64 * 64;
  s->attn_scratch.assign(nth * s->attn_scratch_stride + 64, 0);
}

void attn_plan(const UBatch& ub, int32_t n_head, int32_t n_head_kv, int n_threads, ForwardScratch& s) {
  // Token i sees the prefix of its sequence's cells with position <= its own (causal mask).
  for (int32_t i = 0; i < ub.n; ++i) {
    const auto& pos = s.seq_pos[ub.seq[i]];
    s.attn_n_vis[size_t(i)] = static_cast<int32_t>(std::upper_bound(pos.begin(), pos.end(), ub.pos[i]) - pos.begin());
  }
  // Runs of up to kAttnTokTile consecutive tokens of one sequence, per KV head; when that gives
  // fewer calls than threads, each group's heads are split into chunks.
  const int32_t gqa = n_head / n_head_kv;
  auto tile_end = [&](int32_t i) {
    int32_t e = i + 1;
    while (e < ub.n && e - i < kAttnTokTile && ub.seq[e] == ub.seq[i]) ++e;
    return e;
  };
  int64_t n_tiles = 0;
  for (int32_t i = 0; i < ub.n; i = tile_end(i)) ++n_tiles;
  int32_t chunk = gqa;
  while (chunk > 1 && int64_t(n_head_kv) * n_tiles * ((gqa + chunk - 1) / chunk) < n_threads) chunk = (chunk + 1) / 2;
  s.attn_work.clear();
  for (int32_t i = 0; i < ub.n; i = tile_end(i))
    for (int32_t g = 0; g < n_head_kv; ++g)
      for (int32_t h = 0; h < gqa; h += chunk) s.attn_work.push_back({i, tile_end(i) - i, g * gqa + h, std::min(chunk, gqa - h), g});
  // Longest contexts (latest tokens) first, for the dynamic schedule.
  std::reverse(s.attn_work.begin(), s.attn_work.end());
}

void attn_run(ThreadPool& pool, const KernelSet& k, ForwardScratch& s, const UBatch& ub, const AttnGroup& base, size_t k_group_bytes,
              size_t v_group_bytes, int64_t macs) {
  uint8_t* scratch0 = s.attn_scratch.data() + (64 - reinterpret_cast<uintptr_t>(s.attn_scratch.data()) % 64) % 64;
  std::atomic<int64_t> next{0};
  const int64_t n_work = static_cast<int64_t>(s.attn_work.size());
  auto job = [&](int ith, int) {
    AttnGroup ag = base;
    ag.scratch = scratch0 + size_t(ith) * s.attn_scratch_stride;
    for (int64_t wi; (wi = next.fetch_add(1, std::memory_order_relaxed)) < n_work;) {
      const AttnWork& w = s.attn_work[size_t(wi)];
      ag.k = base.k + size_t(w.g) * k_group_bytes;
      ag.v = base.v + size_t(w.g) * v_group_bytes;
      ag.cells = s.seq_cells[ub.seq[w.i0]].data();
      ag.q = base.q + size_t(w.i0) * base.q_tok_stride + size_t(w.h0) * base.head_dim;
      ag.out = base.out + size_t(w.i0) * base.out_tok_stride + size_t(w.h0) * base.v_dim;
      ag.n_tok = w.n_tok;
      ag.n_head = w.n_head;
      ag.n_vis = s.attn_n_vis.data() + w.i0;
      k.attn(ag);
    }
  };
  // Small attention work (short contexts, tiny models) runs on the caller: a dispatch would
  // cost more than it saves. Queries are independent, so the result is the same either way.
  if (macs < (int64_t(1) << 17)) job(0, 1);
  else pool.run(job);
}

}  // namespace kvstash
