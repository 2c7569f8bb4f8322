// Portable scalar reference kernels. Simple on purpose: they define the expected results
// that the SIMD kernels are tested against.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "core/kernels.h"

namespace kvstash {
namespace {

float load_elem(DType t, const void* row, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(row)[i];
    case DType::F16: return fp16_to_fp32(static_cast<const fp16_t*>(row)[i]);
    case DType::BF16: return bf16_to_fp32(static_cast<const bf16_t*>(row)[i]);
    default: return 0.0f;
  }
}

template <DType T>
void gemm_float(const MatRef& w, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xt = reinterpret_cast<const float*>(x + t * xrb);
    for (int64_t r = r0; r < r1; ++r) {
      const void* wr = w.data + r * w.row_bytes;
      float acc = 0.0f;
      for (int64_t i = 0; i < w.n_cols; ++i) acc += load_elem(T, wr, i) * xt[i];
      y[t * ldy + r] = acc;
    }
  }
}

// Interleaved8 Q8_0 / Q4_0 (kernels.h): per row, acc = fma(float(block integer sum), dw * dx, acc)
// over blocks in order: exactly the SIMD kernel's per-lane arithmetic, so the two agree bit for bit.
template <bool kQ4>
void gemm_il8(const MatRef& w, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t nb = w.n_cols / kQK8_0;
  const Interleaved8Geom geo = interleaved8_geom(w.type, w.row_bytes);
  for (int64_t t = 0; t < n_tok; ++t) {
    const auto* xb = reinterpret_cast<const BlockQ8_0*>(x + t * xrb);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t g = r / kInterleaveRows, j = r % kInterleaveRows;
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w.data + geo.block(g, b);
        fp16_t dw;
        std::memcpy(&dw, blk + j * sizeof(fp16_t), sizeof dw);
        int32_t s = 0;
        if constexpr (kQ4) {
          for (int64_t c = 0; c < 4; ++c)
            for (int64_t i = 0; i < 4; ++i) {
              const uint8_t q = blk[Interleaved8Geom::chunk(c, j) + i];
              s += ((q & 0x0f) - 8) * static_cast<int32_t>(xb[b].qs[4 * c + i]);
              s += ((q >> 4) - 8) * static_cast<int32_t>(xb[b].qs[16 + 4 * c + i]);
            }
        } else {
          for (int64_t c = 0; c < 8; ++c)
            for (int64_t i = 0; i < 4; ++i)
              s += static_cast<int32_t>(static_cast<int8_t>(blk[Interleaved8Geom::chunk(c, j) + i])) * xb[b].qs[4 * c + i];
        }
        acc = std::fma(static_cast<float>(s), fp16_to_fp32(dw) * fp16_to_fp32(xb[b].d), acc);
      }
      y[t * ldy + r] = acc;
    }
  }
}

void gemm_q8_0(const MatRef& w, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.layout == WeightLayout::Interleaved8) return gemm_il8<false>(w, x, xrb, n_tok, y, ldy, r0, r1);
  const int64_t nb = w.n_cols / kQK8_0;
  for (int64_t t = 0; t < n_tok; ++t) {
    const auto* xb = reinterpret_cast<const BlockQ8_0*>(x + t * xrb);
    for (int64_t r = r0; r < r1; ++r) {
      const auto* wb = reinterpret_cast<const BlockQ8_0*>(w.data + r * w.row_bytes);
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t s = 0;
        for (int j = 0; j < kQK8_0; ++j) s += static_cast<int32_t>(wb[b].qs[j]) * xb[b].qs[j];
        acc += static_cast<float>(s) * (fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d));
      }
      y[t * ldy + r] = acc;
    }
  }
}

void gemm_q4_0(const MatRef& w, const uint8_t* x, size_t xrb, int64_t n_tok, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.layout == WeightLayout::Interleaved8) return gemm_il8<true>(w, x, xrb, n_tok, y, ldy, r0, r1);
  const int64_t nb = w.n_cols / kQK4_0;
  for (int64_t t = 0; t < n_tok; ++t) {
    const auto* xb = reinterpret_cast<const BlockQ8_0*>(x + t * xrb);
    for (int64_t r = r0; r < r1; ++r) {
      const auto* wb = reinterpret_cast<const BlockQ4_0*>(w.data + r * w.row_bytes);
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t s = 0;
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          s += ((wb[b].qs[j] & 0x0f) - 8) * static_cast<int32_t>(xb[b].qs[j]);
          s += ((wb[b].qs[j] >> 4) - 8) * static_cast<int32_t>(xb[b].qs[j + kQK4_0 / 2]);
        }
        acc += static_cast<float>(s) * (fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d));
      }
      y[t * ldy + r] = acc;
    }
  }
}

void quantize_q8_0(const float* x, void* y, int64_t n) { quantize_row_ref(DType::Q8_0, x, y, n); }
void quantize_q8_kv(const float* x, void* y, int64_t n) { quantize_row_ref(DType::Q8_KV, x, y, n); }

float dot_row(DType t, const void* row, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += load_elem(t, row, i) * x[i];
  return acc;
}

// Quantized rows: each block (or the whole Q8_KV row) contributes (a * d) * q, so the scale is
// applied once per block, exactly as the SIMD kernels do.
void axpy_row(DType t, const void* row, float a, float* y, int64_t n) {
  switch (t) {
    case DType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(row);
      for (int64_t ib = 0; ib < n / kQK8_0; ++ib) {
        const float ad = a * fp16_to_fp32(b[ib].d);
        for (int j = 0; j < kQK8_0; ++j) y[ib * kQK8_0 + j] += ad * static_cast<float>(b[ib].qs[j]);
      }
      return;
    }
    case DType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(row);
      for (int64_t ib = 0; ib < n / kQK4_0; ++ib) {
        const float ad = a * fp16_to_fp32(b[ib].d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          y[ib * kQK4_0 + j] += ad * static_cast<float>((b[ib].qs[j] & 0x0f) - 8);
          y[ib * kQK4_0 + j + kQK4_0 / 2] += ad * static_cast<float>((b[ib].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::Q8_KV: {
      float d;
      std::memcpy(&d, row, sizeof d);
      const float ad = a * d;
      const auto* q = reinterpret_cast<const int8_t*>(static_cast<const uint8_t*>(row) + kQ8KvHeaderBytes);
      for (int64_t i = 0; i < n; ++i) y[i] += ad * static_cast<float>(q[i]);
      return;
    }
    case DType::F32:
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) y[i] += a * load_elem(t, row, i);
      return;
  }
}

void store_row(DType t, const float* x, void* row, int64_t n) { quantize_row_ref(t, x, row, n); }

float dot_row_q(DType t, const void* krow, const void* qrow, int64_t n) {
  switch (t) {
    case DType::Q8_0: {
      const MatRef w{DType::Q8_0, static_cast<const uint8_t*>(krow), 1, n, 0};
      float y;
      gemm_q8_0(w, static_cast<const uint8_t*>(qrow), 0, 1, &y, 1, 0, 1);
      return y;
    }
    case DType::Q4_0: {
      const MatRef w{DType::Q4_0, static_cast<const uint8_t*>(krow), 1, n, 0};
      float y;
      gemm_q4_0(w, static_cast<const uint8_t*>(qrow), 0, 1, &y, 1, 0, 1);
      return y;
    }
    case DType::Q8_KV: {
      float dk, dq;
      std::memcpy(&dk, krow, sizeof dk);
      std::memcpy(&dq, qrow, sizeof dq);
      const auto* k = reinterpret_cast<const int8_t*>(static_cast<const uint8_t*>(krow) + kQ8KvHeaderBytes);
      const auto* q = reinterpret_cast<const int8_t*>(static_cast<const uint8_t*>(qrow) + kQ8KvHeaderBytes);
      int32_t s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<int32_t>(k[i]) * q[i];
      return static_cast<float>(s) * (dk * dq);
    }
    case DType::F32:
    case DType::F16:
    case DType::BF16: break;
  }
  return NAN;  // float rows use dot_row
}

const KernelSet kScalar = {
    "scalar", gemm_float<DType::F32>, gemm_float<DType::F16>, gemm_float<DType::BF16>, gemm_q8_0, gemm_q4_0,
    quantize_q8_0, dot_row, axpy_row, store_row, quantize_q8_kv, dot_row_q, attn_group_scalar,
};

}  // namespace

DType act_type_for(DType weight) {
  return (weight == DType::Q8_0 || weight == DType::Q4_0) ? DType::Q8_0 : DType::F32;
}

DType vec_dot_type(DType t) {
  switch (t) {
    case DType::Q8_0:
    case DType::Q4_0: return DType::Q8_0;
    case DType::Q8_KV: return DType::Q8_KV;
    case DType::F32:
    case DType::F16:
    case DType::BF16: return DType::F32;
  }
  return DType::F32;
}

const KernelSet& scalar_kernels() { return kScalar; }

const KernelSet& active_kernels() {
  static const KernelSet* chosen = [] {
    const char* e = std::getenv("KVSTASH_KERNELS");
    if (e && std::string_view(e) == "scalar") return &kScalar;
    const KernelSet* a = avx2_kernels();
    return a ? a : &kScalar;
  }();
  return *chosen;
}

}  // namespace kvstash
