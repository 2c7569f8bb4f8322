// Multi-head latent attention (deepseek2): projections, the latent cache rows, and the two
// attention paths over them (MlaPath). Shapes are [n_tokens, features], features contiguous.
//
// Per token and layer the cache holds one row [n_rot + n_lora_kv]: k_rope (RoPE'd, shared by all
// heads) then the RMS-normed latent c. With q = [q_nope (head_dim_nope), q_rope (n_rot)] per head:
//   naive:    k_nope_h = k_dec_h c, v_h = v_b_h c for every cached row, then
//             score = (q_nope . k_nope_h + q_rope . k_rope) * kq_scale, out_h = sum_j p_j v_h(j)
//   absorbed: q_lat_h = [q_rope, k_b_h q_nope] (k_b_h = k_dec_h transposed), then
//             score = q_lat_h . row * kq_scale, o_h = sum_j p_j c(j), out_h = v_b_h o_h
// which are the same products, associated differently.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/matmul.h"
#include "model/arch_forward.h"
#include "model/deepseek2_ops.h"

namespace kvstash::ds2 {
namespace {

// Runs job(ith, nth) on the pool, or on the caller when the work is too small for a dispatch to
// pay off. Rows are independent, so the result is the same either way.
template <typename F>
void run_maybe(ThreadPool& pool, int64_t macs, F&& job) {
  if (macs < (int64_t(1) << 17)) job(0, 1);
  else pool.run(job);
}

// Softmax of sc[0..n) in place (max-subtracted, double sum); returns 1 / sum.
float softmax_in_place(float* sc, size_t n, float mx) {
  double sum = 0.0;
  for (size_t j = 0; j < n; ++j) {
    sc[j] = std::exp(sc[j] - mx);
    sum += sc[j];
  }
  return sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f;
}

// Activations for per-head products over a [n_rows, n_head, stride] f32 buffer whose head h
// starts at column h * stride + col0 and spans `width` columns: F32 weights read the buffer in
// place; Q8_0 / Q4_0 weights need the head rows converted to Q8_0 blocks first, into `q8`
// as [n_rows, n_head, q8 row of width].
struct HeadActs {
  const uint8_t* base;
  size_t head_bytes;  // offset between heads
  size_t row_bytes;   // offset between rows
};
HeadActs head_acts(ThreadPool& pool, const KernelSet& k, DType act, const float* buf, int64_t n_rows, int64_t n_head, int64_t stride,
                   int64_t col0, int64_t width, uint8_t* q8) {
  if (act == DType::F32)
    return {reinterpret_cast<const uint8_t*>(buf + col0), size_t(stride) * sizeof(float), size_t(n_head * stride) * sizeof(float)};
  const size_t rb = dtype_row_bytes(DType::Q8_0, width);
  const int64_t n = n_rows * n_head;
  run_maybe(pool, n * width * 8, [&](int ith, int nth) {
    int64_t p0, p1;
    split_range(n, ith, nth, 1, &p0, &p1);
    for (int64_t p = p0; p < p1; ++p) k.quantize_row_q8_0(buf + p * stride + col0, q8 + p * rb, width);
  });
  return {q8, rb, rb * n_head};
}

void attend_absorbed(const Model& m, uint32_t il, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                     const UBatch& ub) {
  const Hparams& hp = m.hparams();
  const Deepseek2Layer& L = m.ds2_layers()[il];
  MlaMoeScratch& ms = s.mla;
  const int32_t n = ub.n, n_head = hp.n_head, hd = hp.head_dim, nope = hp.head_dim_nope(), n_rot = hp.n_rot;
  const int32_t n_kv = hp.n_lora_kv, row = hp.mla_row_elems(), hd_v = hp.head_dim_v, n_q = n_head * hd;

  // q_lat[i, h] = [q_rope, k_b_h q_nope]: the query in the cache row's order.
  const HeadActs qa = head_acts(pool, k, act_type_for(L.k_b[0].type), s.q.data(), n, n_head, hd, 0, nope, ms.acts2.data());
  ms.tasks.clear();
  for (int32_t h = 0; h < n_head; ++h)
    ms.tasks.push_back({&L.k_b[h], qa.base + h * qa.head_bytes, qa.row_bytes, n, ms.q_lat.data() + size_t(h) * row + n_rot,
                        int64_t(n_head) * row});
  matmul_tasks(pool, k, ms.tasks.data(), ms.tasks.size());
  for (int32_t i = 0; i < n; ++i)
    for (int32_t h = 0; h < n_head; ++h)
      std::memcpy(ms.q_lat.data() + (size_t(i) * n_head + h) * row, s.q.data() + size_t(i) * n_q + size_t(h) * hd + nope,
                  sizeof(float) * n_rot);

  // One KV head shared by every query head (MQA over the latent rows): the row is the key, its
  // latent part (after the RoPE part) the value. The kernel decodes whole rows, so a q8_KV row's
  // single scale needs no special case.
  const KvRowSpec& ls = cache.layout().layer(il).streams[0];
  AttnGroup ag;
  ag.k_type = ls.dtype;
  ag.v_type = ls.dtype;
  ag.head_dim = row;
  ag.v_row_elems = row;
  ag.v_elem0 = n_rot;
  ag.v_dim = n_kv;
  ag.scale = kq_scale(hp);
  ag.k = cache.row(il, 0, 0);  // rows lie back to back: row(il, 0, c) = row(il, 0, 0) + c * row_bytes
  ag.k_cell_bytes = ls.row_bytes;
  ag.v = ag.k;
  ag.v_cell_bytes = ls.row_bytes;
  ag.q = ms.q_lat.data();
  ag.q_tok_stride = size_t(n_head) * row;
  ag.out = ms.o_lat.data();
  ag.out_tok_stride = size_t(n_head) * n_kv;
  attn_run(pool, k, s, ub, ag, 0, 0, int64_t(n) * n_head * row * int64_t(s.seq_cells[ub.seq[0]].size()));

  // attn[i, h] = v_b_h o_lat[i, h]
  const HeadActs oa = head_acts(pool, k, act_type_for(L.v_b[0].type), ms.o_lat.data(), n, n_head, n_kv, 0, n_kv, ms.acts2.data());
  ms.tasks.clear();
  for (int32_t h = 0; h < n_head; ++h)
    ms.tasks.push_back({&L.v_b[h], oa.base + h * oa.head_bytes, oa.row_bytes, n, s.attn.data() + size_t(h) * hd_v, int64_t(n_head) * hd_v});
  matmul_tasks(pool, k, ms.tasks.data(), ms.tasks.size());
}

void attend_naive(const Model& m, uint32_t il, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                  const UBatch& ub) {
  const Hparams& hp = m.hparams();
  const Deepseek2Layer& L = m.ds2_layers()[il];
  MlaMoeScratch& ms = s.mla;
  const int32_t n = ub.n, n_head = hp.n_head, hd = hp.head_dim, nope = hp.head_dim_nope(), n_rot = hp.n_rot;
  const int32_t n_kv = hp.n_lora_kv, row = hp.mla_row_elems(), hd_v = hp.head_dim_v, n_q = n_head * hd, n_att = n_head * hd_v;
  const KvRowSpec& ls = cache.layout().layer(il).streams[0];
  const float scale = kq_scale(hp);

  uint64_t done = 0;
  for (int32_t i0 = 0; i0 < n; ++i0) {
    const SeqId sq = ub.seq[i0];
    if ((done >> sq) & 1) continue;
    done |= uint64_t(1) << sq;
    ms.seq_toks.clear();
    for (int32_t i = i0; i < n; ++i)
      if (ub.seq[i] == sq) ms.seq_toks.push_back(i);
    const auto& cells = s.seq_cells[sq];
    const auto& pos = s.seq_pos[sq];
    const int64_t n_c = static_cast<int64_t>(cells.size());

    // Decompress every cached row of the sequence: K (nope part) and V per head.
    run_maybe(pool, n_c * row * 4, [&](int ith, int nth) {
      int64_t c0, c1;
      split_range(n_c, ith, nth, 1, &c0, &c1);
      for (int64_t c = c0; c < c1; ++c) dequantize_row_ref(ls.dtype, cache.row(il, 0, cells[c]), ms.lat_rows.data() + c * row, row);
    });
    const DType act_k = act_type_for(L.k_dec[0].type), act_v = act_type_for(L.v_b[0].type);
    const HeadActs lf = head_acts(pool, k, DType::F32, ms.lat_rows.data(), n_c, 1, row, n_rot, n_kv, nullptr);
    const HeadActs lq = (act_k != DType::F32 || act_v != DType::F32)
                            ? head_acts(pool, k, DType::Q8_0, ms.lat_rows.data(), n_c, 1, row, n_rot, n_kv, ms.lat_acts.data())
                            : lf;
    const HeadActs& xk = act_k == DType::F32 ? lf : lq;
    const HeadActs& xv = act_v == DType::F32 ? lf : lq;
    ms.tasks.clear();
    for (int32_t h = 0; h < n_head; ++h) {
      ms.tasks.push_back({&L.k_dec[h], xk.base, xk.row_bytes, n_c, ms.k_dec.data() + size_t(h) * nope, int64_t(n_head) * nope});
      ms.tasks.push_back({&L.v_b[h], xv.base, xv.row_bytes, n_c, ms.v_dec.data() + size_t(h) * hd_v, int64_t(n_att)});
    }
    matmul_tasks(pool, k, ms.tasks.data(), ms.tasks.size());

    const int64_t n_t = static_cast<int64_t>(ms.seq_toks.size());
    auto job = [&](int ith, int nth) {
      int64_t p0, p1;
      split_range(n_t * n_head, ith, nth, 1, &p0, &p1);
      float* sc = s.scores.data() + size_t(ith) * cache.n_cells();
      for (int64_t p = p0; p < p1; ++p) {
        const int32_t i = ms.seq_toks[p / n_head], h = static_cast<int32_t>(p % n_head);
        const float* qn = s.q.data() + size_t(i) * n_q + size_t(h) * hd;  // [nope] then [n_rot] (RoPE'd)
        const size_t n_vis = static_cast<size_t>(std::upper_bound(pos.begin(), pos.end(), ub.pos[i]) - pos.begin());
        float mx = -INFINITY;
        for (size_t j = 0; j < n_vis; ++j) {
          const float s_nope = k.dot_row(DType::F32, ms.k_dec.data() + (j * n_head + h) * size_t(nope), qn, nope);
          const float s_rope = k.dot_row(DType::F32, ms.lat_rows.data() + j * size_t(row), qn + nope, n_rot);
          sc[j] = (s_nope + s_rope) * scale;
          mx = std::max(mx, sc[j]);
        }
        const float inv = softmax_in_place(sc, n_vis, mx);
        float* o = s.attn.data() + size_t(i) * n_att + size_t(h) * hd_v;
        std::fill(o, o + hd_v, 0.0f);
        for (size_t j = 0; j < n_vis; ++j) k.axpy_row(DType::F32, ms.v_dec.data() + j * size_t(n_att) + size_t(h) * hd_v, sc[j] * inv, o, hd_v);
      }
    };
    run_maybe(pool, n_t * n_head * (nope + n_rot + hd_v) * n_c, job);
  }
}

}  // namespace

void mla_attention(const Model& m, uint32_t il, KvCache& cache, ThreadPool& pool, const KernelSet& k, ForwardScratch& s,
                   const UBatch& ub) {
  using layer_ops::rms_norm;
  const Hparams& hp = m.hparams();
  const Deepseek2Layer& L = m.ds2_layers()[il];
  MlaMoeScratch& ms = s.mla;
  const int32_t n = ub.n, n_embd = hp.n_embd, n_head = hp.n_head, hd = hp.head_dim, nope = hp.head_dim_nope(), n_rot = hp.n_rot;
  const int32_t n_kv = hp.n_lora_kv, row = hp.mla_row_elems(), n_q = n_head * hd, n_lq = hp.n_lora_q;

  // Projections: q (through the q LoRA when present) and the compressed kv [latent, k_rope].
  Acts a = prepare_acts(pool, k, act_type_for(L.wkv_a.type), s.xn.data(), n, n_embd, s.acts.data());
  if (n_lq > 0) {
    matmul(pool, k, a, {{&L.wq_a, ms.q_a.data(), n_lq}, {&L.wkv_a, ms.kv_a.data(), row}});
    for (int32_t i = 0; i < n; ++i) rms_norm(ms.q_a.data() + size_t(i) * n_lq, L.q_a_norm, ms.q_a.data() + size_t(i) * n_lq, n_lq, hp.rms_eps);
    a = prepare_acts(pool, k, act_type_for(L.wq_b.type), ms.q_a.data(), n, n_lq, s.acts.data());
    matmul(pool, k, a, {{&L.wq_b, s.q.data(), n_q}});
  } else {
    matmul(pool, k, a, {{&L.wq, s.q.data(), n_q}, {&L.wkv_a, ms.kv_a.data(), row}});
  }

  // RoPE on the rope parts; this batch's cache rows: [k_rope, rms_norm(latent)].
  const KvRowSpec& ls = cache.layout().layer(il).streams[0];
  float* lr = ms.lat_row.data();
  for (int32_t i = 0; i < n; ++i) {
    const float* cs = s.rope_cs.data() + size_t(i) * n_rot;
    for (int32_t h = 0; h < n_head; ++h) layer_ops::rope_rotate(s.q.data() + size_t(i) * n_q + size_t(h) * hd + nope, n_rot, cs);
    const float* kv = ms.kv_a.data() + size_t(i) * row;  // [n_kv] latent, then [n_rot] k_rope
    std::memcpy(lr, kv + n_kv, sizeof(float) * n_rot);
    layer_ops::rope_rotate(lr, n_rot, cs);
    rms_norm(kv, L.kv_a_norm, lr + n_rot, n_kv, hp.rms_eps);
    k.store_row(ls.dtype, lr, cache.row(il, 0, ub.cells[i]), row);
  }

  if (s.mla_path == MlaPath::Absorbed) attend_absorbed(m, il, cache, pool, k, s, ub);
  else attend_naive(m, il, cache, pool, k, s, ub);
}

}  // namespace kvstash::ds2
