// State writer (docs/state-format.md §1-§4, §7): format 1.1, or 1.0 on request (§2.1). Streams
// rows straight from the cache.
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstring>
#include <memory>

#include "core/le.h"
#include "core/threadpool.h"
#include "state/state.h"
#include "state/state_cells.h"
#include "state/state_encoding.h"
#include "state/state_format.h"
#include "state/state_hash.h"

namespace kvstash {
namespace {

using namespace statefmt;

// Writes one §3 frame: header, payload pieces (hashed unless counting), checksum trailer.
class SectionOut {
 public:
  SectionOut(ByteSink& sink, bool hash) : sink_(sink), hash_(hash) {}
  Status begin(uint32_t tag, uint32_t flags, uint64_t len) {
    uint8_t f[kFrameBytes];
    store_le<uint32_t>(f, tag);
    store_le<uint32_t>(f + 4, flags);
    store_le<uint64_t>(f + 8, len);
    if (hash_) st_.reset();
    left_ = len;
    return sink_.write(f, sizeof f);
  }
  Status put(const void* p, size_t n) {
    assert(n <= left_ && "section payload longer than announced");
    if (hash_) st_.update(p, n);
    left_ -= n;
    return sink_.write(p, n);
  }
  Status end() { return end_with(hash_ ? st_.digest() : 0); }
  // For a payload written with put_unhashed: the caller hashed it (same bytes, same order).
  Status put_unhashed(const void* p, size_t n) {
    assert(n <= left_ && "section payload longer than announced");
    left_ -= n;
    return sink_.write(p, n);
  }
  Status end_with(uint64_t digest) {
    assert(left_ == 0 && "section payload shorter than announced");
    uint8_t t[kTrailerBytes];
    store_le<uint64_t>(t, digest);
    return sink_.write(t, sizeof t);
  }
  bool hashing() const { return hash_; }
  Status whole(uint32_t tag, uint32_t flags, const std::vector<uint8_t>& payload) {
    KV_RETURN_IF_ERROR(begin(tag, flags, payload.size()));
    KV_RETURN_IF_ERROR(put(payload.data(), payload.size()));
    return end();
  }

 private:
  ByteSink& sink_;
  bool hash_;
  StateHasher st_;
  uint64_t left_ = 0;
};

struct Run {
  uint32_t first, n;
};

// §4.5: one KVDT section per (layer, stream), rows in cell order. With a pool of 2+ threads,
// thread 1 hashes the sections in order and publishes each digest while thread 0 writes them;
// thread 0 writes a trailer once its digest is there. Both only read the rows.
Status write_kv(const KvCache& cache, const std::vector<Run>& runs, uint32_t n, ThreadPool* pool, SectionOut& out) {
  const KvLayout& L = cache.layout();
  auto prefix = [](uint32_t il, uint32_t si, uint8_t* b8) {
    store_le<uint32_t>(b8, il);
    store_le<uint32_t>(b8 + 4, si);
  };
  if (!pool || pool->n_threads() < 2 || !out.hashing()) {
    for (uint32_t il = 0; il < L.n_layers(); ++il)
      for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
        const size_t rb = L.layer(il).streams[si].row_bytes;
        KV_RETURN_IF_ERROR(out.begin(kTagKv, kFlagRequired, 8 + uint64_t(rb) * n));
        uint8_t b8[8];
        prefix(il, si, b8);
        KV_RETURN_IF_ERROR(out.put(b8, 8));
        for (const Run& r : runs) KV_RETURN_IF_ERROR(out.put(cache.row(il, si, r.first), rb * r.n));
        KV_RETURN_IF_ERROR(out.end());
      }
    return Status::ok();
  }
  std::vector<uint64_t> digests;
  for (uint32_t il = 0; il < L.n_layers(); ++il) digests.resize(digests.size() + L.layer(il).streams.size());
  std::atomic<uint32_t> n_hashed{0};
  Status status;
  pool->run([&](int ith, int) {
    if (ith == 1) {
      StateHasher h;
      uint32_t i = 0;
      for (uint32_t il = 0; il < L.n_layers(); ++il)
        for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
          const size_t rb = L.layer(il).streams[si].row_bytes;
          uint8_t b8[8];
          prefix(il, si, b8);
          h.reset();
          h.update(b8, 8);
          for (const Run& r : runs) h.update(cache.row(il, si, r.first), rb * r.n);
          digests[i] = h.digest();
          n_hashed.store(++i, std::memory_order_release);
          n_hashed.notify_one();
        }
    } else if (ith == 0) {
      status = [&]() -> Status {
        uint32_t i = 0;
        for (uint32_t il = 0; il < L.n_layers(); ++il)
          for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si, ++i) {
            const size_t rb = L.layer(il).streams[si].row_bytes;
            KV_RETURN_IF_ERROR(out.begin(kTagKv, kFlagRequired, 8 + uint64_t(rb) * n));
            uint8_t b8[8];
            prefix(il, si, b8);
            KV_RETURN_IF_ERROR(out.put_unhashed(b8, 8));
            for (const Run& r : runs) KV_RETURN_IF_ERROR(out.put_unhashed(cache.row(il, si, r.first), rb * r.n));
            for (uint32_t h = n_hashed.load(std::memory_order_acquire); h <= i; h = n_hashed.load(std::memory_order_acquire)) n_hashed.wait(h);
            KV_RETURN_IF_ERROR(out.end_with(digests[i]));
          }
        return Status::ok();
      }();
    }
  });
  return status;
}

// §4.4.1 CELL (format 1.0): one 16-byte record per cell.
Status write_cell_records(const KvCache& cache, const std::vector<uint32_t>& cells, StateKind kind, SectionOut& out) {
  const uint32_t n = static_cast<uint32_t>(cells.size());
  KV_RETURN_IF_ERROR(out.begin(kTagCells, kFlagRequired, kCellsPrefixBytes + uint64_t(kCellRecordBytes) * n));
  uint8_t b4[kCellsPrefixBytes];
  store_le<uint32_t>(b4, n);
  KV_RETURN_IF_ERROR(out.put(b4, sizeof b4));
  uint8_t chunk[kCellRecordBytes * 256];
  for (uint32_t i0 = 0; i0 < n; i0 += 256) {
    const uint32_t m = std::min<uint32_t>(256, n - i0);
    for (uint32_t k = 0; k < m; ++k) {
      const uint32_t c = cells[i0 + k];
      uint8_t* r = chunk + k * kCellRecordBytes;
      store_le<int32_t>(r, cache.cell_pos(c));
      store_le<int32_t>(r + 4, cache.cell_token(c));
      store_le<uint64_t>(r + 8, cell_set_for(cache, c, kind));
    }
    KV_RETURN_IF_ERROR(out.put(chunk, size_t(m) * kCellRecordBytes));
  }
  return out.end();
}

// §4.4.2 CEL2 (format 1.1): counts, runs, then one token per cell.
Status write_cell_runs(const KvCache& cache, const std::vector<uint32_t>& cells, StateKind kind, SectionOut& out) {
  const uint32_t n = static_cast<uint32_t>(cells.size());
  const std::vector<CellRun> runs = cell_runs(cache, cells, kind);
  const uint32_t n_runs = static_cast<uint32_t>(runs.size());  // <= n
  KV_RETURN_IF_ERROR(out.begin(kTagCells2, kFlagRequired, kCells2PrefixBytes + uint64_t(kCellRunBytes) * n_runs + uint64_t(kCellTokenBytes) * n));
  uint8_t b8[kCells2PrefixBytes];
  store_le<uint32_t>(b8, n);
  store_le<uint32_t>(b8 + 4, n_runs);
  KV_RETURN_IF_ERROR(out.put(b8, sizeof b8));
  uint8_t chunk[kCellRunBytes * 256];
  static_assert(kCellRunBytes >= kCellTokenBytes, "the chunk holds 256 runs or 256 tokens");
  for (uint32_t j0 = 0; j0 < n_runs; j0 += 256) {
    const uint32_t m = std::min<uint32_t>(256, n_runs - j0);
    for (uint32_t j = 0; j < m; ++j) {
      uint8_t* r = chunk + j * kCellRunBytes;
      store_le<int32_t>(r, runs[j0 + j].first_pos);
      store_le<uint32_t>(r + 4, runs[j0 + j].n);
      store_le<uint64_t>(r + 8, runs[j0 + j].seqs);
    }
    KV_RETURN_IF_ERROR(out.put(chunk, size_t(m) * kCellRunBytes));
  }
  for (uint32_t i0 = 0; i0 < n; i0 += 256) {
    const uint32_t m = std::min<uint32_t>(256, n - i0);
    for (uint32_t k = 0; k < m; ++k) store_le<int32_t>(chunk + k * kCellTokenBytes, cache.cell_token(cells[i0 + k]));
    KV_RETURN_IF_ERROR(out.put(chunk, size_t(m) * kCellTokenBytes));
  }
  return out.end();
}

Status write_state(const KvCache& cache, const std::vector<uint32_t>& cells, StateKind kind, SeqId saved_seq,
                   const ModelFingerprint& fp, const StateSaveOptions& opt, uint64_t file_bytes, bool hash, ByteSink& sink) {
  const KvLayout& L = cache.layout();
  const uint32_t n = static_cast<uint32_t>(cells.size());
  const bool with_logits = opt.logits && opt.n_logits > 0;
  // §4.1: n_logits is 0 or n_vocab; the reader refuses anything else, so never write it.
  if (with_logits && opt.n_logits != fp.n_vocab)
    return invalid_argument("state: " + std::to_string(opt.n_logits) + " logits given, the model's vocabulary has " + std::to_string(fp.n_vocab));
  static_assert(kMinor == 1, "StateSaveOptions::format_minor defaults to the current minor");
  if (opt.format_minor > kMinor)
    return invalid_argument("state: cannot write format 1." + std::to_string(opt.format_minor) + ", this build writes 1.0 and 1.1");
  uint32_t n_kv_sections = 0;
  for (uint32_t il = 0; il < L.n_layers(); ++il) n_kv_sections += static_cast<uint32_t>(L.layer(il).streams.size());
  const uint32_t n_sections = 4 + n_kv_sections + (with_logits ? 1 : 0) + 1;

  // §2 header
  uint8_t h[kHeaderBytes] = {};
  std::memcpy(h, kMagic, 8);
  store_le<uint16_t>(h + 8, kMajor);
  store_le<uint16_t>(h + 10, opt.format_minor);
  store_le<uint32_t>(h + 12, kEndianMarker);
  store_le<uint32_t>(h + 16, kHeaderBytes);
  store_le<uint32_t>(h + 20, static_cast<uint32_t>(kind));
  store_le<uint64_t>(h + 24, file_bytes);
  store_le<uint32_t>(h + 32, n_sections);
  store_le<uint64_t>(h + 56, hash ? state_hash(h, kHeaderBytes) : 0);
  KV_RETURN_IF_ERROR(sink.write(h, sizeof h));

  SectionOut out(sink, hash);
  // §4.1 META
  {
    Enc e;
    uint64_t created = opt.created_ms;
    if (created == 0)
      created = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    e.u64(created);
    e.u32(cache.n_cells());
    e.u32(n);
    e.i32(saved_seq);
    e.u32(with_logits ? opt.n_logits : 0);
    e.str(std::string("kvstash ") + KVSTASH_VERSION + " (" + KVSTASH_COMMIT + ")");
    KV_RETURN_IF_ERROR(out.whole(kTagMeta, kFlagRequired, e.b));
  }
  // §4.2 MODEL
  {
    Enc e;
    e.u64(fp.hparams_hash);
    e.u64(fp.tokenizer_hash);
    e.u64(fp.tensors_hash);
    e.u64(fp.weights_hash);
    e.u32(fp.n_vocab);
    e.str(fp.arch);
    e.str(fp.name);
    KV_RETURN_IF_ERROR(out.whole(kTagModel, kFlagRequired, e.b));
  }
  // §4.3 LAYOUT: copied from the live KvLayout, never recomputed.
  {
    Enc e;
    e.u32(L.n_layers());
    for (uint32_t il = 0; il < L.n_layers(); ++il) {
      const auto& streams = L.layer(il).streams;
      e.u32(static_cast<uint32_t>(streams.size()));
      for (const KvRowSpec& s : streams) {
        e.u8(static_cast<uint8_t>(s.stream));
        e.u8(static_cast<uint8_t>(s.scale_layout));
        e.u8(static_cast<uint8_t>(s.order));
        e.u8(0);
        e.u32(static_cast<uint32_t>(s.dtype));
        e.u32(s.elems_per_row);
        e.u32(s.n_groups);
        e.u64(s.row_bytes);
        e.u64(n);
      }
    }
    KV_RETURN_IF_ERROR(out.whole(kTagLayout, kFlagRequired, e.b));
  }
  // §4.4 CELLS
  KV_RETURN_IF_ERROR(opt.format_minor == 0 ? write_cell_records(cache, cells, kind, out) : write_cell_runs(cache, cells, kind, out));
  // §4.5 KVDATA: contiguous runs of cells are written with one call.
  std::vector<Run> runs;
  for (uint32_t i = 0; i < n; ++i) {
    if (!runs.empty() && runs.back().first + runs.back().n == cells[i]) ++runs.back().n;
    else runs.push_back({cells[i], 1});
  }
  KV_RETURN_IF_ERROR(write_kv(cache, runs, n, hash ? opt.pool : nullptr, out));
  // §4.6 LOGT
  if (with_logits) {
    KV_RETURN_IF_ERROR(out.begin(kTagLogits, 0, uint64_t(opt.n_logits) * 4));
    KV_RETURN_IF_ERROR(out.put(opt.logits, size_t(opt.n_logits) * 4));
    KV_RETURN_IF_ERROR(out.end());
  }
  // §4.7 END
  KV_RETURN_IF_ERROR(out.begin(kTagEnd, kFlagRequired, 0));
  return out.end();
}

std::vector<uint32_t> cells_of(const KvCache& cache, SeqId seq) {
  std::vector<uint32_t> cells;
  if (seq >= 0) {
    cache.seq_cells_sorted(seq, &cells);
  } else {
    for (uint32_t c = 0; c < cache.n_cells(); ++c)
      if (!cache.cell_empty(c)) cells.push_back(c);
  }
  return cells;
}

Result<StateSaveResult> write_two_pass(const KvCache& cache, SeqId seq, StateKind kind, const ModelFingerprint& fp,
                                       const StateSaveOptions& opt, ByteSink& sink) {
  const std::vector<uint32_t> cells = cells_of(cache, seq);
  CountingSink counter;
  KV_RETURN_IF_ERROR(write_state(cache, cells, kind, seq, fp, opt, 0, /*hash=*/false, counter));
  const uint64_t start = sink.n_written();
  KV_RETURN_IF_ERROR(write_state(cache, cells, kind, seq, fp, opt, counter.n_written(), /*hash=*/true, sink));
  assert(sink.n_written() - start == counter.n_written());
  (void)start;
  return StateSaveResult{static_cast<uint32_t>(cells.size()), counter.n_written()};
}

}  // namespace

Result<StateSaveResult> state_write_seq(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const StateSaveOptions& opt,
                                        ByteSink& sink) {
  if (!valid_seq_id(seq)) return invalid_argument("state: sequence id " + std::to_string(seq) + " is out of range");
  return write_two_pass(cache, seq, StateKind::Sequence, fp, opt, sink);
}

Result<StateSaveResult> state_write_all(const KvCache& cache, const ModelFingerprint& fp, const StateSaveOptions& opt, ByteSink& sink) {
  return write_two_pass(cache, -1, StateKind::Context, fp, opt, sink);
}

uint64_t state_size_seq(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const StateSaveOptions& opt) {
  CountingSink counter;
  if (!valid_seq_id(seq)) return 0;
  Status s = write_state(cache, cells_of(cache, seq), StateKind::Sequence, seq, fp, opt, 0, false, counter);
  return s.is_ok() ? counter.n_written() : 0;
}

}  // namespace kvstash
