// Interleaved8 repacking (layout described in kernels.h). Pure byte moves: no value changes.
#include <cassert>
#include <cstddef>
#include <cstring>

#include "core/kernels.h"

namespace kvstash {

static_assert(offsetof(BlockQ8_0, qs) == sizeof(fp16_t) && offsetof(BlockQ4_0, qs) == sizeof(fp16_t),
              "repack_interleaved8 copies the scale, then the quant bytes");
static_assert(sizeof(BlockQ8_0::qs) % Interleaved8Geom::kChunkBytes == 0 && sizeof(BlockQ4_0::qs) % Interleaved8Geom::kChunkBytes == 0);

namespace {

// kNq quant bytes per row block (32 for Q8_0, 16 for Q4_0): a compile-time count, so the chunk
// moves unroll into plain 4-byte loads and stores (the copy of a 1 GB model is then memory-bound).
template <size_t kNq>
void repack(const uint8_t* src, int64_t n_rows, int64_t nb, size_t rb, uint8_t* dst) {
  constexpr size_t kBlockBytes = sizeof(fp16_t) + kNq;
  static_assert(kBlockBytes == sizeof(BlockQ8_0) || kBlockBytes == sizeof(BlockQ4_0));
  const Interleaved8Geom geo{kBlockBytes, rb};
  for (int64_t g = 0; g < n_rows / kInterleaveRows; ++g) {
    const uint8_t* rows = src + size_t(g * kInterleaveRows) * rb;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* out = dst + geo.block(g, b);
      for (int64_t j = 0; j < kInterleaveRows; ++j) {
        // Both block structs start with the fp16 scale, then the quant bytes.
        const uint8_t* in = rows + size_t(j) * rb + size_t(b) * kBlockBytes;
        std::memcpy(out + j * sizeof(fp16_t), in, sizeof(fp16_t));
        for (size_t c = 0; c < kNq / Interleaved8Geom::kChunkBytes; ++c)
          std::memcpy(out + Interleaved8Geom::chunk(int64_t(c), j), in + sizeof(fp16_t) + c * Interleaved8Geom::kChunkBytes,
                      Interleaved8Geom::kChunkBytes);
      }
    }
  }
}

}  // namespace

void repack_interleaved8(DType t, const uint8_t* src, int64_t n_rows, int64_t n_cols, uint8_t* dst) {
  assert(can_interleave8(t, n_rows));
  const size_t rb = dtype_row_bytes(t, n_cols);
  const int64_t nb = n_cols / dtype_traits(t).block_elems;
  if (t == DType::Q8_0) repack<sizeof(BlockQ8_0::qs)>(src, n_rows, nb, rb, dst);
  else repack<sizeof(BlockQ4_0::qs)>(src, n_rows, nb, rb, dst);
}

}  // namespace kvstash
