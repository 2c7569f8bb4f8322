// KVDT rows into cache cells (docs/state-format.md §4.5, §5.2).
#include "state/state_rows.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>

#include "core/le.h"
#include "state/state_format.h"
#include "state/state_hash.h"

namespace kvstash {
namespace {

// Rows are hashed right after they land, in pieces small enough to still be in the core's caches
// (1 MiB: measured against 64 KiB .. 4 MiB on a 4096-token f16 restore, docs/performance.md).
constexpr size_t kPieceBytes = size_t(1) << 20;
// A run of consecutive cells shorter than this goes through the buffer: one read per run would
// cost more than the copy it saves (a fragmented cache has runs of one cell).
constexpr size_t kMinDirectBytes = size_t(64) << 10;

struct Worker {
  StateHasher hash;
  std::vector<uint8_t> buf;  // [kPieceBytes / row bytes rows, row bytes]
  std::vector<float> tmp;    // one group row of floats for dtype conversion
};

class SectionReader {
 public:
  SectionReader(ByteSource& src, const KvLayout& file, const KvSection& s, const RowDest* dest, Worker& w)
      : src_(src), s_(s), dest_(dest), w_(w), rb_(file.layer(s.il).streams[s.si].row_bytes), n_(file.n_cells()),
        rows_off_(s.payload_off + 8), where_("state: KVDT layer " + std::to_string(s.il) + " " + kv_stream_name(file.layer(s.il).streams[s.si].stream)) {}

  Status run() {
    uint8_t b8[8];
    KV_RETURN_IF_ERROR(src_.read_at(s_.payload_off, b8, 8));
    if (load_le<uint32_t>(b8) != s_.il || load_le<uint32_t>(b8 + 4) != s_.si)
      return corruption(where_ + ": section is for layer " + std::to_string(load_le<uint32_t>(b8)) + " stream " + std::to_string(load_le<uint32_t>(b8 + 4)));
    w_.hash.reset();
    w_.hash.update(b8, 8);
    if (!dest_ || !dest_->same_type(s_.il, s_.si)) {
      KV_RETURN_IF_ERROR(buffered(0, n_));
    } else {
      // Long runs of consecutive cells are read in place; the short ones in between are
      // gathered (they are consecutive in the file) and go through the buffer.
      const auto& runs = dest_->runs();
      uint32_t pend_k0 = 0, pend_n = 0;
      for (const RowDest::Run& r : runs) {
        if (runs.size() > 1 && size_t(r.n) * rb_ < kMinDirectBytes) {
          if (pend_n == 0) pend_k0 = r.k0;
          pend_n += r.n;
          continue;
        }
        if (pend_n > 0) KV_RETURN_IF_ERROR(buffered(pend_k0, pend_n));
        pend_n = 0;
        KV_RETURN_IF_ERROR(in_place(r.k0, r.n));
      }
      if (pend_n > 0) KV_RETURN_IF_ERROR(buffered(pend_k0, pend_n));
    }
    uint8_t t[statefmt::kTrailerBytes];
    const uint64_t payload_bytes = 8 + uint64_t(rb_) * n_;
    KV_RETURN_IF_ERROR(src_.read_at(s_.payload_off + payload_bytes, t, sizeof t));
    const uint64_t want = load_le<uint64_t>(t), got = w_.hash.digest();
    if (want != got)
      return corruption("state: checksum mismatch in section " + std::to_string(s_.index) + " ('KVDT'): stored " + std::to_string(want) +
                        ", computed " + std::to_string(got));
    return Status::ok();
  }

 private:
  uint32_t rows_per_piece() const { return static_cast<uint32_t>(std::max<size_t>(1, kPieceBytes / rb_)); }

  // File rows [k0, k0 + n) straight into their consecutive cells, hashed where they landed.
  Status in_place(uint32_t k0, uint32_t n) {
    uint8_t* dst = dest_->row(s_.il, s_.si, k0);
    for (uint32_t j = 0; j < n;) {
      const uint32_t m = std::min(rows_per_piece(), n - j);
      const size_t bytes = size_t(m) * rb_;
      uint8_t* p = dst + size_t(j) * rb_;
      KV_RETURN_IF_ERROR(src_.read_at(rows_off_ + uint64_t(k0 + j) * rb_, p, bytes));
      w_.hash.update(p, bytes);
      j += m;
    }
    return Status::ok();
  }

  // File rows [k0, k0 + n) through the buffer, then placed (scattered, converted) when there is a destination.
  Status buffered(uint32_t k0, uint32_t n) {
    const uint32_t per = std::min(rows_per_piece(), n);
    if (w_.buf.size() < size_t(per) * rb_) w_.buf.resize(size_t(per) * rb_);
    for (uint32_t j = 0; j < n;) {
      const uint32_t m = std::min(per, n - j);
      const size_t bytes = size_t(m) * rb_;
      KV_RETURN_IF_ERROR(src_.read_at(rows_off_ + uint64_t(k0 + j) * rb_, w_.buf.data(), bytes));
      w_.hash.update(w_.buf.data(), bytes);
      if (dest_) dest_->place(s_.il, s_.si, k0 + j, m, w_.buf.data(), w_.tmp);
      j += m;
    }
    return Status::ok();
  }

  ByteSource& src_;
  const KvSection& s_;
  const RowDest* dest_;
  Worker& w_;
  const size_t rb_;
  const uint32_t n_;
  const uint64_t rows_off_;
  const std::string where_;
};

}  // namespace

RowDest::RowDest(KvCache& cache, const KvLayout& file, const std::vector<uint32_t>& cells) : cache_(cache), file_(file), cells_(cells) {
  for (uint32_t k = 0; k < cells.size(); ++k) {
    if (!runs_.empty() && cells[runs_.back().k0] + runs_.back().n == cells[k]) ++runs_.back().n;
    else runs_.push_back({k, 1});
  }
}

bool RowDest::same_type(uint32_t il, uint32_t si) const {
  return file_.layer(il).streams[si].dtype == cache_.layout().layer(il).streams[si].dtype;
}

void RowDest::place(uint32_t il, uint32_t si, uint32_t k0, uint32_t n, const uint8_t* p, std::vector<float>& tmp) const {
  const KvRowSpec& fs = file_.layer(il).streams[si];
  const KvRowSpec& ls = cache_.layout().layer(il).streams[si];
  if (fs.dtype == ls.dtype) {
    for (uint32_t k = 0; k < n; ++k) std::memcpy(row(il, si, k0 + k), p + size_t(k) * fs.row_bytes, fs.row_bytes);
    return;
  }
  const uint32_t ge = fs.group_elems();
  tmp.resize(ge);
  for (uint32_t k = 0; k < n; ++k) {
    const uint8_t* src = p + size_t(k) * fs.row_bytes;
    uint8_t* dst = row(il, si, k0 + k);
    for (uint32_t g = 0; g < fs.n_groups; ++g) {
      dequantize_row_ref(fs.dtype, src + g * fs.group_bytes, tmp.data(), ge);
      quantize_row_ref(ls.dtype, tmp.data(), dst + g * ls.group_bytes, ge);
    }
  }
}

Status read_kv_sections(ByteSource& src, const KvLayout& file, const std::vector<KvSection>& sections, const RowDest* dest,
                        ThreadPool* pool) {
  if (!pool || pool->n_threads() < 2 || sections.size() < 2 || !src.concurrent_reads()) {
    Worker w;
    for (const KvSection& s : sections) KV_RETURN_IF_ERROR(SectionReader(src, file, s, dest, w).run());
    return Status::ok();
  }
  // Threads take sections in file order; each section is hashed by one thread (XXH3 streams).
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < pool->n_threads(); ++i) workers.push_back(std::make_unique<Worker>());
  std::vector<Status> status(sections.size());
  std::atomic<size_t> next{0}, first_bad{SIZE_MAX};
  pool->run([&](int ith, int) {
    Worker& w = *workers[static_cast<size_t>(ith)];
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < sections.size();) {
      if (i > first_bad.load(std::memory_order_relaxed)) break;
      Status s = SectionReader(src, file, sections[i], dest, w).run();
      if (s.is_ok()) continue;
      status[i] = std::move(s);
      for (size_t cur = first_bad.load(); i < cur && !first_bad.compare_exchange_weak(cur, i);) {
      }
    }
  });
  const size_t bad = first_bad.load();
  return bad == SIZE_MAX ? Status::ok() : status[bad];
}

}  // namespace kvstash
