// libFuzzer target: state files (docs/state-format.md) through the real restore path.
// Input: two configuration bytes (fuzz_support.h: live model, cache types, read_seq/read_all,
// target sequence, cells already in the cache, checksums recomputed or not), then the file. Every input is inspected
// (state_inspect) and restored into a KvCache of a tiny model generated in-process.
// Invariants: a failed restore leaves the cache exactly as it was (bookkeeping and the rows of
// every held cell, §5); a successful one holds exactly the cells state_inspect reported, with
// the file's rows (converted row by row when the live dtype differs), and leaves every other
// sequence untouched; a file that restores also inspects.
#include <cstring>
#include <map>

#include "core/le.h"
#include "fuzz_support.h"
#include "state/state.h"
#include "state/state_format.h"

using namespace kvstash;
using fuzz::StateConfig;

namespace {

struct Live {
  std::unique_ptr<Model> model;
  ModelFingerprint fp;
};

Live& live(fuzz::TinyArch arch) {
  static Live models[2];
  Live& l = models[static_cast<int>(arch)];
  if (!l.model) {
    l.model = fuzz::load_tiny_model(arch);
    l.fp = l.model->fingerprint();
  }
  return l;
}

// Everything a restore may not change when it fails: every cell's bookkeeping and the rows of
// held cells (free cells' rows are scratch: §5.2 writes rows there before the commit).
struct Snapshot {
  std::vector<int32_t> pos, tok;
  std::vector<uint64_t> seqs;
  uint32_t n_used = 0;
  std::vector<std::vector<uint8_t>> rows;  // [cell] all layers and streams, empty when free

  explicit Snapshot(const KvCache& c) {
    const KvLayout& L = c.layout();
    n_used = c.n_used();
    for (uint32_t cell = 0; cell < c.n_cells(); ++cell) {
      pos.push_back(c.cell_pos(cell));
      tok.push_back(c.cell_token(cell));
      seqs.push_back(c.cell_seqs(cell));
      std::vector<uint8_t> r;
      if (!c.cell_empty(cell))
        for (uint32_t il = 0; il < L.n_layers(); ++il)
          for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si)
            r.insert(r.end(), c.row(il, si, cell), c.row(il, si, cell) + L.layer(il).streams[si].row_bytes);
      rows.push_back(std::move(r));
    }
  }
};

// The sections of a file that state_inspect accepted, found by walking its frames (§1-§3).
struct Sections {
  std::map<std::pair<uint32_t, uint32_t>, const uint8_t*> kv_rows;  // (layer, stream) -> first row
  const uint8_t* logits = nullptr;
};

Sections walk(const uint8_t* p, size_t n) {
  using namespace statefmt;
  Sections s;
  uint64_t off = load_le<uint32_t>(p + 16);  // header bytes
  while (off + kFrameBytes <= n) {
    const uint32_t tag = load_le<uint32_t>(p + off);
    const uint64_t len = load_le<uint64_t>(p + off + 8);
    const uint8_t* payload = p + off + kFrameBytes;
    if (tag == kTagKv) s.kv_rows[{load_le<uint32_t>(payload), load_le<uint32_t>(payload + 4)}] = payload + 8;
    if (tag == kTagLogits) s.logits = payload;
    if (tag == kTagEnd) break;
    off += kFrameBytes + len + kTrailerBytes;
  }
  return s;
}

// The row a restore must produce in the live cache from file row `src` (§5.2: same bytes, or
// each group dequantized from the file's dtype and quantized to the live one).
std::vector<uint8_t> expected_row(const KvRowSpec& fs, const KvRowSpec& ls, const uint8_t* file_row) {
  const std::vector<uint8_t> row(file_row, file_row + fs.row_bytes);  // rows need not be aligned in the file
  if (fs.dtype == ls.dtype) return row;
  const uint8_t* src = row.data();
  std::vector<uint8_t> out(ls.row_bytes);
  std::vector<float> tmp(fs.group_elems());
  for (uint32_t g = 0; g < fs.n_groups; ++g) {
    dequantize_row_ref(fs.dtype, src + g * fs.group_bytes, tmp.data(), fs.group_elems());
    quantize_row_ref(ls.dtype, tmp.data(), out.data() + g * ls.group_bytes, ls.group_elems());
  }
  return out;
}

void check_rows(const KvCache& cache, const StateInfo& info, const Sections& sec, uint32_t k, uint32_t cell) {
  const KvLayout& L = cache.layout();
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
      const KvRowSpec& fs = info.layout.layer(il).streams[si];
      const KvRowSpec& ls = L.layer(il).streams[si];
      auto it = sec.kv_rows.find({il, si});
      FUZZ_CHECK(it != sec.kv_rows.end(), "no KVDT section for layer " + std::to_string(il) + " stream " + std::to_string(si));
      const std::vector<uint8_t> want = expected_row(fs, ls, it->second + size_t(k) * fs.row_bytes);
      FUZZ_CHECK(std::memcmp(cache.row(il, si, cell), want.data(), ls.row_bytes) == 0,
                 "layer " + std::to_string(il) + " stream " + std::to_string(si) + " row of file cell " + std::to_string(k) +
                     " differs in cache cell " + std::to_string(cell));
    }
}

void check_unchanged(const KvCache& cache, const Snapshot& before, const std::string& why) {
  const Snapshot after(cache);
  FUZZ_CHECK(after.n_used == before.n_used, "failed restore changed n_used: " + why);
  for (uint32_t c = 0; c < cache.n_cells(); ++c) {
    FUZZ_CHECK(after.seqs[c] == before.seqs[c] && after.pos[c] == before.pos[c] && after.tok[c] == before.tok[c],
               "failed restore changed cell " + std::to_string(c) + ": " + why);
    FUZZ_CHECK(after.rows[c] == before.rows[c], "failed restore changed the rows of held cell " + std::to_string(c) + ": " + why);
  }
}

void check_restored_seq(const KvCache& cache, const Snapshot& before, const StateInfo& info, const Sections& sec,
                        const StateLoadResult& res, SeqId dest) {
  const uint64_t bit = uint64_t(1) << dest;
  const uint32_t n = info.layout.n_cells();
  FUZZ_CHECK(res.n_tokens == n, "n_tokens " + std::to_string(res.n_tokens) + ", inspect says " + std::to_string(n));
  FUZZ_CHECK(res.tokens == info.cell_token && res.positions == info.cell_pos, "reported tokens/positions differ from the file's cells");
  // Other sequences: the same cells, positions, tokens and rows.
  const Snapshot after(cache);
  for (uint32_t c = 0; c < cache.n_cells(); ++c) {
    FUZZ_CHECK((cache.cell_seqs(c) & ~bit) == (before.seqs[c] & ~bit), "cell " + std::to_string(c) + " changed for another sequence");
    if ((before.seqs[c] & ~bit) == 0) continue;
    FUZZ_CHECK(cache.cell_pos(c) == before.pos[c] && cache.cell_token(c) == before.tok[c], "shared cell " + std::to_string(c) + " moved");
    FUZZ_CHECK(after.rows[c] == before.rows[c], "rows of cell " + std::to_string(c) + " of another sequence changed");
  }
  // The target: exactly the file's cells, in position order.
  std::vector<uint32_t> cells;
  cache.seq_cells_sorted(dest, &cells);
  FUZZ_CHECK(cells.size() == n, "target holds " + std::to_string(cells.size()) + " cells, the file " + std::to_string(n));
  for (uint32_t k = 0; k < n; ++k) {
    FUZZ_CHECK(cache.cell_pos(cells[k]) == info.cell_pos[k] && cache.cell_token(cells[k]) == info.cell_token[k],
               "target cell " + std::to_string(k) + " has another position or token than the file");
    FUZZ_CHECK(cache.cell_seqs(cells[k]) == bit, "restored cell " + std::to_string(cells[k]) + " is shared");
    check_rows(cache, info, sec, k, cells[k]);
  }
}

void check_restored_all(const KvCache& cache, const StateInfo& info, const Sections& sec, const StateLoadResult& res) {
  const uint32_t n = info.layout.n_cells();
  FUZZ_CHECK(res.n_tokens == n && cache.n_used() == n, "context restore: " + std::to_string(cache.n_used()) + " cells used, file has " + std::to_string(n));
  for (uint32_t k = 0; k < n; ++k) {
    const int lowest = __builtin_ctzll(info.cell_seqs[k]);
    const int64_t c = cache.find_cell(lowest, info.cell_pos[k]);
    FUZZ_CHECK(c >= 0, "file cell " + std::to_string(k) + " is not in the cache");
    FUZZ_CHECK(cache.cell_seqs(uint32_t(c)) == info.cell_seqs[k] && cache.cell_token(uint32_t(c)) == info.cell_token[k],
               "cell " + std::to_string(c) + " has another sequence set or token than file cell " + std::to_string(k));
    check_rows(cache, info, sec, k, uint32_t(c));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const StateConfig cfg = fuzz::decode_state_config(data[0], data[1]);
  std::vector<uint8_t> fixed;
  if (cfg.fix_checksums) {
    fixed.assign(data + 2, data + size);
    fuzz::fix_state_checksums(fixed);
  }
  const uint8_t* file = cfg.fix_checksums ? fixed.data() : data + 2;
  const size_t file_bytes = size - 2;

  MemSource inspect_src(file, file_bytes);
  Result<StateInfo> info = state_inspect(inspect_src);

  Live& l = live(cfg.arch);
  auto layout = l.model->kv_layout(fuzz::kStateCells, cfg.type_k, cfg.type_v);
  FUZZ_CHECK(layout.is_ok(), layout.status().to_string());
  KvCache cache(std::move(layout).value());
  fuzz::prefill_cache(cache, cfg.prefill, static_cast<int32_t>(l.fp.n_vocab));
  const Snapshot before(cache);

  StateLoadOptions opt;
  opt.allow_convert = cfg.allow_convert;
  MemSource src(file, file_bytes);
  Result<StateLoadResult> res = cfg.read_all ? state_read_all(cache, l.fp, src, opt) : state_read_seq(cache, cfg.dest, l.fp, src, opt);
  if (!res.is_ok()) {
    FUZZ_CHECK(!res.status().message().empty(), "an error without a message");
    check_unchanged(cache, before, res.status().to_string());
    return 0;
  }
  FUZZ_CHECK(info.is_ok(), "restored a file that state_inspect refuses: " + info.status().to_string());
  FUZZ_CHECK(res->n_bytes == file_bytes, "n_bytes " + std::to_string(res->n_bytes));
  FUZZ_CHECK(info->kind == (cfg.read_all ? StateKind::Context : StateKind::Sequence), "restored a file of the other kind");
  const Sections sec = walk(file, file_bytes);
  bool any_converted = false;
  for (uint32_t il = 0; il < cache.layout().n_layers(); ++il)
    for (uint32_t si = 0; si < cache.layout().layer(il).streams.size(); ++si)
      any_converted |= info->layout.layer(il).streams[si].dtype != cache.layout().layer(il).streams[si].dtype;
  FUZZ_CHECK(res->converted == any_converted, "conversion reported " + std::to_string(res->converted));
  FUZZ_CHECK(cfg.allow_convert || !any_converted, "converted rows although conversion was refused");
  if (info->n_logits > 0) {
    FUZZ_CHECK(sec.logits && res->logits.size() == info->n_logits &&
                   std::memcmp(res->logits.data(), sec.logits, size_t(info->n_logits) * 4) == 0,
               "restored logits differ from the LOGT section");
  } else {
    FUZZ_CHECK(res->logits.empty(), "logits restored from a file without LOGT");
  }
  if (cfg.read_all) check_restored_all(cache, *info, sec, *res);
  else check_restored_seq(cache, before, *info, sec, *res, cfg.dest);
  return 0;
}
