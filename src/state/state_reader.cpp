// State reader (docs/state-format.md). Distrusts every byte: structure, sizes and checksums are
// verified before use, and rows land only in free cells until the whole file checked out (§5).
#include <algorithm>
#include <cstring>

#include "core/le.h"
#include "state/state.h"
#include "state/state_cells.h"
#include "state/state_encoding.h"
#include "state/state_format.h"
#include "state/state_hash.h"
#include "state/state_rows.h"

namespace kvstash {
namespace {

using namespace statefmt;

std::string tag_name(uint32_t tag) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>((tag >> (8 * i)) & 0xff);
    s += (c >= 32 && c < 127) ? c : '?';
  }
  return s;
}

std::optional<DType> kv_dtype_from_id(uint32_t id) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_KV})
    if (static_cast<uint32_t>(t) == id) return t;
  return std::nullopt;
}

struct Frame {
  uint32_t tag = 0, flags = 0;
  uint64_t len = 0;
  uint64_t off = 0;  // payload offset
};

class Reader {
 public:
  explicit Reader(ByteSource& src) : src_(src) {}

  // Reads and checks the header and the small sections (META, MODL, LAYT, CEL2 or CELL) into info.
  Status read_prefix(StateInfo* info);
  // Walks KVDT sections, optional sections and END from the end of the prefix; with `dest`,
  // KV rows land there as they are read, before their checksums are known (dest holds only
  // free cells). KV sections run on `pool` when it is given (state_rows.h).
  Status walk_rest(StateInfo* info, const RowDest* dest, ThreadPool* pool, std::vector<float>* logits);

 private:
  Status next_frame(Frame* f);
  // The frame of the KVDT section of layer il, stream index si (tag, flags, payload bytes).
  Status next_kv_frame(const KvLayout& L, uint32_t il, uint32_t si, uint32_t n, Frame* f);
  Status read_small(const Frame& f, std::vector<uint8_t>* payload);
  Status check_trailer(const Frame& f, uint64_t digest);

  ByteSource& src_;
  StateHasher hash_;
  uint64_t pos_ = 0;
  uint64_t prefix_end_ = 0;
  uint32_t n_sections_ = 0;
  uint32_t sections_seen_ = 0;
  std::vector<uint8_t> chunk_;
};

Status Reader::next_frame(Frame* f) {
  uint8_t b[kFrameBytes];
  if (src_.size() - pos_ < kFrameBytes + kTrailerBytes)
    return corruption("state: truncated: section " + std::to_string(sections_seen_) + " frame at byte " + std::to_string(pos_) +
                      " runs past the end of the " + std::to_string(src_.size()) + "-byte file");
  KV_RETURN_IF_ERROR(src_.read_at(pos_, b, sizeof b));
  f->tag = load_le<uint32_t>(b);
  f->flags = load_le<uint32_t>(b + 4);
  f->len = load_le<uint64_t>(b + 8);
  f->off = pos_ + kFrameBytes;
  const std::string nm = "state: section " + std::to_string(sections_seen_) + " ('" + tag_name(f->tag) + "')";
  if (f->flags & ~kFlagRequired) return corruption(nm + ": unknown flag bits " + std::to_string(f->flags));
  if (f->len > src_.size() - f->off - kTrailerBytes)
    return corruption(nm + ": payload of " + std::to_string(f->len) + " bytes runs past the end of the file (" +
                      std::to_string(src_.size() - f->off - kTrailerBytes) + " left)");
  if (++sections_seen_ > n_sections_)
    return corruption(nm + ": more sections than the " + std::to_string(n_sections_) + " the header announces");
  pos_ = f->off + f->len + kTrailerBytes;
  return Status::ok();
}

Status Reader::check_trailer(const Frame& f, uint64_t digest) {
  uint8_t t[kTrailerBytes];
  KV_RETURN_IF_ERROR(src_.read_at(f.off + f.len, t, sizeof t));
  const uint64_t want = load_le<uint64_t>(t);
  if (want != digest)
    return corruption("state: checksum mismatch in section " + std::to_string(sections_seen_ - 1) + " ('" + tag_name(f.tag) +
                      "'): stored " + std::to_string(want) + ", computed " + std::to_string(digest));
  return Status::ok();
}

Status Reader::read_small(const Frame& f, std::vector<uint8_t>* payload) {
  payload->resize(f.len);
  KV_RETURN_IF_ERROR(src_.read_at(f.off, payload->data(), f.len));
  return check_trailer(f, state_hash(payload->data(), payload->size()));
}

Status expect_tag(const Frame& f, uint32_t tag) {
  if (f.tag != tag)
    return corruption("state: expected section '" + tag_name(tag) + "', found '" + tag_name(f.tag) + "'");
  if (!(f.flags & kFlagRequired)) return corruption("state: section '" + tag_name(tag) + "' must be marked required");
  return Status::ok();
}

// §4.4, §2.1: the cells section is CEL2 or CELL. Another required tag there is a newer minor's
// cells section (Unsupported) in a file of a newer minor, and corruption in any other file.
Status expect_cells_tag(const Frame& f, uint16_t file_minor) {
  if (f.tag == kTagCells || f.tag == kTagCells2) return expect_tag(f, f.tag);
  const bool known = f.tag == kTagMeta || f.tag == kTagModel || f.tag == kTagLayout || f.tag == kTagKv || f.tag == kTagLogits || f.tag == kTagEnd;
  if ((f.flags & kFlagRequired) && !known && file_minor > kMinor)
    return unsupported("state: required section '" + tag_name(f.tag) + "' in place of the cells is not understood by this version (file 1." +
                       std::to_string(file_minor) + ", this build reads up to 1." + std::to_string(kMinor) + ")");
  return corruption("state: expected section 'CEL2' or 'CELL', found '" + tag_name(f.tag) + "'");
}

// §4.4: the `left` bytes after the cells section must hold the KVDT sections of n rows (§4.5)
// and END, so that a file cannot make the reader allocate cells it carries no rows for.
Status check_kv_room(const KvLayout& L, uint32_t n, uint64_t left) {
  const uint64_t have = left;
  auto take = [&left](uint64_t unit, uint64_t count) {
    if (unit != 0 && count > left / unit) return false;
    left -= unit * count;
    return true;
  };
  bool fits = take(kFrameBytes + kTrailerBytes, 1);  // END
  for (uint32_t il = 0; il < L.n_layers() && fits; ++il)
    for (const KvRowSpec& s : L.layer(il).streams)
      fits = fits && take(kFrameBytes + 8 + kTrailerBytes, 1) && take(s.row_bytes, n);
  if (!fits)
    return corruption("state: " + std::to_string(n) + " tokens of KV rows do not fit in the " + std::to_string(have) +
                      " bytes after the cells section");
  return Status::ok();
}

Status Reader::next_kv_frame(const KvLayout& L, uint32_t il, uint32_t si, uint32_t n, Frame* f) {
  const KvRowSpec& s = L.layer(il).streams[si];
  KV_RETURN_IF_ERROR(next_frame(f));
  KV_RETURN_IF_ERROR(expect_tag(*f, kTagKv));
  if (f->len != 8 + uint64_t(s.row_bytes) * n)
    return corruption("state: KVDT layer " + std::to_string(il) + " " + kv_stream_name(s.stream) + ": " + std::to_string(f->len) +
                      " bytes, the layout implies " + std::to_string(8 + uint64_t(s.row_bytes) * n));
  return Status::ok();
}

Status Reader::read_prefix(StateInfo* info) {
  // §2 header
  uint8_t h[kHeaderBytes];
  if (src_.size() < kHeaderBytes)
    return corruption("state: truncated: file is " + std::to_string(src_.size()) + " bytes, the header alone is " + std::to_string(kHeaderBytes));
  KV_RETURN_IF_ERROR(src_.read_at(0, h, sizeof h));
  if (std::memcmp(h, kMagic, 8) != 0) return corruption("state: bad magic: not a kvstash state file");
  info->major = load_le<uint16_t>(h + 8);
  info->minor = load_le<uint16_t>(h + 10);
  if (info->major != kMajor)
    return unsupported("state: format version " + std::to_string(info->major) + "." + std::to_string(info->minor) +
                       " is not supported (this build reads " + std::to_string(kMajor) + ".x)");
  if (load_le<uint32_t>(h + 12) != kEndianMarker) return unsupported("state: endianness marker mismatch (file from a big-endian writer?)");
  const uint32_t header_bytes = load_le<uint32_t>(h + 16);
  if (header_bytes < kHeaderBytes || header_bytes > kMaxHeaderBytes)
    return corruption("state: header size " + std::to_string(header_bytes) + ", expected " + std::to_string(kHeaderBytes) + ".." + std::to_string(kMaxHeaderBytes));
  if (src_.size() < header_bytes) return corruption("state: truncated inside the header");
  std::vector<uint8_t> hb(header_bytes);
  KV_RETURN_IF_ERROR(src_.read_at(0, hb.data(), header_bytes));
  const uint64_t stored = load_le<uint64_t>(hb.data() + 56);
  store_le<uint64_t>(hb.data() + 56, 0);
  if (state_hash(hb.data(), hb.size()) != stored) return corruption("state: header checksum mismatch");
  const uint32_t kind = load_le<uint32_t>(h + 20);
  if (kind != 1 && kind != 2) return corruption("state: unknown kind " + std::to_string(kind) + " (1 = sequence, 2 = context)");
  info->kind = static_cast<StateKind>(kind);
  info->file_bytes = load_le<uint64_t>(h + 24);
  if (info->file_bytes != src_.size())
    return corruption("state: truncated or extended: header says " + std::to_string(info->file_bytes) + " bytes, file has " + std::to_string(src_.size()));
  n_sections_ = load_le<uint32_t>(h + 32);
  if (n_sections_ < 6) return corruption("state: section count " + std::to_string(n_sections_) + ", expected at least 6");
  if (load_le<uint32_t>(h + 36) != 0) return corruption("state: reserved header field is not 0");
  for (int i = 40; i < 56; ++i)
    if (h[i] != 0) return corruption("state: reserved header bytes are not 0");
  pos_ = header_bytes;

  std::vector<uint8_t> p;
  Frame f;
  // §4.1 META
  KV_RETURN_IF_ERROR(next_frame(&f));
  KV_RETURN_IF_ERROR(expect_tag(f, kTagMeta));
  if (f.len > kMaxSmallSection) return corruption("state: META section of " + std::to_string(f.len) + " bytes is too large");
  KV_RETURN_IF_ERROR(read_small(f, &p));
  Dec m(p.data(), p.size());
  info->created_ms = m.get<uint64_t>();
  info->n_ctx = m.get<uint32_t>();
  const uint32_t n_tokens = m.get<uint32_t>();
  info->saved_seq = m.get<int32_t>();
  info->n_logits = m.get<uint32_t>();
  info->writer = m.str();
  if (!m.ok()) return corruption("state: META section is truncated");
  if (info->kind == StateKind::Sequence && !valid_seq_id(info->saved_seq))
    return corruption("state: META saved sequence " + std::to_string(info->saved_seq) + " is out of range");
  // §4.2 MODEL
  KV_RETURN_IF_ERROR(next_frame(&f));
  KV_RETURN_IF_ERROR(expect_tag(f, kTagModel));
  if (f.len > kMaxSmallSection) return corruption("state: MODL section is too large");
  KV_RETURN_IF_ERROR(read_small(f, &p));
  Dec md(p.data(), p.size());
  info->model.hparams_hash = md.get<uint64_t>();
  info->model.tokenizer_hash = md.get<uint64_t>();
  info->model.tensors_hash = md.get<uint64_t>();
  info->model.weights_hash = md.get<uint64_t>();
  info->model.n_vocab = md.get<uint32_t>();
  info->model.arch = md.str();
  info->model.name = md.str();
  if (!md.ok()) return corruption("state: MODL section is truncated");
  if (info->n_logits != 0 && info->n_logits != info->model.n_vocab)
    return corruption("state: META n_logits " + std::to_string(info->n_logits) + " differs from n_vocab " + std::to_string(info->model.n_vocab));
  // §4.3 LAYOUT: rebuilt through KvLayout::make, then every recorded size is compared.
  KV_RETURN_IF_ERROR(next_frame(&f));
  KV_RETURN_IF_ERROR(expect_tag(f, kTagLayout));
  if (f.len > kMaxSmallSection) return corruption("state: LAYT section is too large");
  KV_RETURN_IF_ERROR(read_small(f, &p));
  Dec ld(p.data(), p.size());
  const uint32_t n_layers = ld.get<uint32_t>();
  if (!ld.ok() || n_layers == 0 || uint64_t(n_layers) * 4 > ld.remaining())
    return corruption("state: LAYT layer count " + std::to_string(n_layers) + " does not fit the section");
  std::vector<std::vector<KvLayout::StreamRequest>> req(n_layers);
  struct Rec {
    uint8_t scale, order;
    uint64_t row_bytes, row_count;
  };
  std::vector<std::vector<Rec>> recs(n_layers);
  for (uint32_t il = 0; il < n_layers; ++il) {
    const uint32_t n_streams = ld.get<uint32_t>();
    if (!ld.ok() || n_streams == 0 || n_streams > 8 || uint64_t(n_streams) * kStreamRecordBytes > ld.remaining())
      return corruption("state: LAYT layer " + std::to_string(il) + ": stream count " + std::to_string(n_streams) + " is invalid");
    for (uint32_t si = 0; si < n_streams; ++si) {
      const uint8_t stream = ld.get<uint8_t>(), scale = ld.get<uint8_t>(), order = ld.get<uint8_t>(), rsv = ld.get<uint8_t>();
      const uint32_t dtype_id = ld.get<uint32_t>(), elems = ld.get<uint32_t>(), groups = ld.get<uint32_t>();
      const uint64_t row_bytes = ld.get<uint64_t>(), row_count = ld.get<uint64_t>();
      const std::string where = "state: LAYT layer " + std::to_string(il) + " stream " + std::to_string(si);
      if (stream > 2) return corruption(where + ": unknown stream kind " + std::to_string(stream));
      auto dt = kv_dtype_from_id(dtype_id);
      if (!dt) return unsupported(where + ": unknown cache element type id " + std::to_string(dtype_id));
      if (order != 0 || rsv != 0) return corruption(where + ": unsupported row order " + std::to_string(order));
      req[il].push_back({static_cast<KvStream>(stream), *dt, elems, groups});
      recs[il].push_back({scale, order, row_bytes, row_count});
    }
  }
  if (!ld.ok() || ld.remaining() != 0) return corruption("state: LAYT section size does not match its contents");
  if (std::string err = KvLayout::make(n_tokens, req, &info->layout); !err.empty()) return corruption("state: LAYT: " + err);
  info->kv_bytes = 0;
  for (uint32_t il = 0; il < n_layers; ++il)
    for (uint32_t si = 0; si < recs[il].size(); ++si) {
      const KvRowSpec& s = info->layout.layer(il).streams[si];
      const std::string where = "state: LAYT layer " + std::to_string(il) + " " + kv_stream_name(s.stream);
      if (recs[il][si].row_bytes != s.row_bytes)
        return corruption(where + " row_bytes " + std::to_string(recs[il][si].row_bytes) + ", but " + dtype_name(s.dtype) + "[" +
                          std::to_string(s.elems_per_row) + "] rows are " + std::to_string(s.row_bytes));
      if (recs[il][si].scale != static_cast<uint8_t>(s.scale_layout))
        return corruption(where + " scale layout " + std::to_string(recs[il][si].scale) + " does not match " + dtype_name(s.dtype));
      if (recs[il][si].row_count != n_tokens)
        return corruption(where + " row count " + std::to_string(recs[il][si].row_count) + ", META says " + std::to_string(n_tokens) + " tokens");
      info->kv_bytes += s.row_bytes * uint64_t(n_tokens);
    }
  // §4.4 CELLS: sizes first (from the frame and the counts at the payload's start), and the room
  // the rows need after the section, before anything is allocated for the cells.
  KV_RETURN_IF_ERROR(next_frame(&f));
  KV_RETURN_IF_ERROR(expect_cells_tag(f, info->minor));
  uint8_t counts[kCells2PrefixBytes] = {};
  const size_t n_counts = static_cast<size_t>(std::min<uint64_t>(f.len, sizeof counts));
  KV_RETURN_IF_ERROR(src_.read_at(f.off, counts, n_counts));
  KV_RETURN_IF_ERROR(check_cells_size(f.tag, f.len, counts, n_counts, n_tokens));
  KV_RETURN_IF_ERROR(check_kv_room(info->layout, n_tokens, src_.size() - pos_));
  KV_RETURN_IF_ERROR(read_small(f, &p));
  CellList cells;
  KV_RETURN_IF_ERROR(decode_cells(f.tag, p.data(), p.size(), n_tokens, info->kind, info->model.n_vocab, &cells));
  info->cell_pos = std::move(cells.pos);
  info->cell_token = std::move(cells.token);
  info->cell_seqs = std::move(cells.seqs);
  info->cells_tag = tag_name(f.tag);
  info->n_cell_runs = cells.n_runs;
  prefix_end_ = pos_;
  return Status::ok();
}

Status Reader::walk_rest(StateInfo* info, const RowDest* dest, ThreadPool* pool, std::vector<float>* logits) {
  pos_ = prefix_end_;
  sections_seen_ = 4;
  const KvLayout& L = info->layout;
  const uint32_t n = L.n_cells();
  Frame f;
  // KVDT frames first (small reads), then their payloads. A bad frame is reported only after
  // the payloads before it, so the error is the one a section-by-section walk meets first.
  std::vector<KvSection> kv;
  Status frame_error;
  for (uint32_t il = 0; il < L.n_layers() && frame_error.is_ok(); ++il) {
    for (uint32_t si = 0; si < L.layer(il).streams.size(); ++si) {
      frame_error = next_kv_frame(L, il, si, n, &f);
      if (!frame_error.is_ok()) break;
      kv.push_back({il, si, sections_seen_ - 1, f.off});
    }
  }
  KV_RETURN_IF_ERROR(read_kv_sections(src_, L, kv, dest, pool));
  KV_RETURN_IF_ERROR(frame_error);
  bool seen_logits = false;
  for (;;) {
    KV_RETURN_IF_ERROR(next_frame(&f));
    if (f.tag == kTagEnd) {
      if (!(f.flags & kFlagRequired) || f.len != 0) return corruption("state: malformed END section");
      KV_RETURN_IF_ERROR(check_trailer(f, state_hash(nullptr, 0)));
      break;
    }
    if (f.tag == kTagLogits && info->n_logits > 0 && !seen_logits) {
      // §4.6: LOGT is optional; a set required bit is a corrupted frame, not a newer feature.
      if (f.flags != 0) return corruption("state: LOGT section is marked required; it is optional (§4.6)");
      if (f.len != uint64_t(info->n_logits) * 4) return corruption("state: LOGT section size does not match n_logits");
      seen_logits = true;
      std::vector<uint8_t> p;
      KV_RETURN_IF_ERROR(read_small(f, &p));
      if (logits) {
        logits->resize(info->n_logits);
        std::memcpy(logits->data(), p.data(), p.size());
      }
      continue;
    }
    if (f.tag == kTagMeta || f.tag == kTagModel || f.tag == kTagLayout || f.tag == kTagCells || f.tag == kTagCells2 || f.tag == kTagKv ||
        f.tag == kTagLogits)
      return corruption("state: unexpected section '" + tag_name(f.tag) + "' after the KV data");
    if (f.flags & kFlagRequired) return unsupported("state: required section '" + tag_name(f.tag) + "' is not understood by this version");
    // Unknown optional section (newer minor): verify and skip.
    hash_.reset();
    chunk_.resize(static_cast<size_t>(std::min<uint64_t>(f.len == 0 ? 1 : f.len, uint64_t(1) << 20)));
    for (uint64_t o = 0; o < f.len; o += chunk_.size()) {
      const size_t m = static_cast<size_t>(std::min<uint64_t>(chunk_.size(), f.len - o));
      KV_RETURN_IF_ERROR(src_.read_at(f.off + o, chunk_.data(), m));
      hash_.update(chunk_.data(), m);
    }
    KV_RETURN_IF_ERROR(check_trailer(f, hash_.digest()));
    info->unknown_sections.push_back(tag_name(f.tag));
  }
  // A LOGT whose tag was damaged would otherwise be skipped as an unknown optional section.
  if (info->n_logits > 0 && !seen_logits)
    return corruption("state: META announces " + std::to_string(info->n_logits) + " logits, but there is no LOGT section");
  if (sections_seen_ != n_sections_)
    return corruption("state: " + std::to_string(sections_seen_) + " sections, the header announces " + std::to_string(n_sections_));
  if (pos_ != src_.size()) return corruption("state: " + std::to_string(src_.size() - pos_) + " bytes after the END section");
  return Status::ok();
}

std::string hex(uint64_t v) {
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

Status check_model(const ModelFingerprint& file, const ModelFingerprint& live) {
  if (file.arch != live.arch) return invalid_argument("state: saved for architecture '" + file.arch + "', the model is '" + live.arch + "'");
  auto cmp = [](const char* what, uint64_t a, uint64_t b) {
    return a == b ? Status::ok()
                  : invalid_argument(std::string("state: saved for another model: ") + what + " hash " + hex(a) + " in the file, " + hex(b) + " live");
  };
  KV_RETURN_IF_ERROR(cmp("hyperparameters", file.hparams_hash, live.hparams_hash));
  KV_RETURN_IF_ERROR(cmp("tokenizer", file.tokenizer_hash, live.tokenizer_hash));
  KV_RETURN_IF_ERROR(cmp("tensor directory", file.tensors_hash, live.tensors_hash));
  KV_RETURN_IF_ERROR(cmp("weights", file.weights_hash, live.weights_hash));
  if (file.n_vocab != live.n_vocab)
    return invalid_argument("state: saved with a vocabulary of " + std::to_string(file.n_vocab) + ", the model has " + std::to_string(live.n_vocab));
  return Status::ok();
}

// Compares the file's layout with the live one; fills the conversion summary.
Status check_layout(const KvLayout& file, const KvLayout& live, bool allow_convert, bool* converted, std::string* summary) {
  if (file.n_layers() != live.n_layers())
    return invalid_argument("state: layout mismatch: the file has " + std::to_string(file.n_layers()) + " layers, the cache " + std::to_string(live.n_layers()));
  *converted = false;
  for (uint32_t il = 0; il < file.n_layers(); ++il) {
    const auto& fs = file.layer(il).streams;
    const auto& ls = live.layer(il).streams;
    if (fs.size() != ls.size())
      return invalid_argument("state: layout mismatch: layer " + std::to_string(il) + " has " + std::to_string(fs.size()) + " streams in the file, " +
                              std::to_string(ls.size()) + " live");
    for (size_t si = 0; si < fs.size(); ++si) {
      const std::string where = "state: layout mismatch: layer " + std::to_string(il) + " " + kv_stream_name(fs[si].stream);
      if (fs[si].stream != ls[si].stream) return invalid_argument(where + ": the live cache stores " + kv_stream_name(ls[si].stream) + " there");
      if (fs[si].elems_per_row != ls[si].elems_per_row)
        return invalid_argument(where + " elems_per_row " + std::to_string(fs[si].elems_per_row) + ", live layout " + std::to_string(ls[si].elems_per_row));
      if (fs[si].n_groups != ls[si].n_groups)
        return invalid_argument(where + " groups " + std::to_string(fs[si].n_groups) + ", live layout " + std::to_string(ls[si].n_groups));
      if (fs[si].dtype != ls[si].dtype) {
        if (!allow_convert)
          return invalid_argument(where + " type " + dtype_name(fs[si].dtype) + ", live cache " + dtype_name(ls[si].dtype) + " (conversion disabled)");
        if (!*converted || il == 0) {
          const std::string piece = std::string(kv_stream_name(fs[si].stream)) + " " + dtype_name(fs[si].dtype) + " -> " + dtype_name(ls[si].dtype);
          if (summary->find(piece) == std::string::npos) *summary += (summary->empty() ? "" : ", ") + piece;
        }
        *converted = true;
      }
    }
  }
  return Status::ok();
}

Result<StateLoadResult> restore(KvCache& cache, SeqId dest, StateKind want_kind, const ModelFingerprint& live, ByteSource& src,
                                const StateLoadOptions& opt) {
  if (want_kind == StateKind::Sequence && !valid_seq_id(dest))
    return invalid_argument("state: target sequence id " + std::to_string(dest) + " is out of range");
  Reader r(src);
  StateInfo info;
  KV_RETURN_IF_ERROR(r.read_prefix(&info));
  if (info.kind != want_kind)
    return invalid_argument(std::string("state: the file holds ") + (info.kind == StateKind::Sequence ? "one sequence" : "a whole context") +
                            ", expected " + (want_kind == StateKind::Sequence ? "one sequence" : "a whole context"));
  KV_RETURN_IF_ERROR(check_model(info.model, live));
  StateLoadResult res;
  KV_RETURN_IF_ERROR(check_layout(info.layout, cache.layout(), opt.allow_convert, &res.converted, &res.conversion));
  const uint32_t n = info.layout.n_cells();
  if (n > cache.n_cells())
    return resource_exhausted("state: the file holds " + std::to_string(n) + " tokens, more than the context's " + std::to_string(cache.n_cells()) + " cells");
  // Cells the target holds alone are free once it is replaced.
  uint32_t own = 0;
  if (want_kind == StateKind::Context) {
    own = cache.n_used();
  } else {
    for (uint32_t c = 0; c < cache.n_cells(); ++c) own += cache.cell_seqs(c) == (uint64_t(1) << dest);
  }
  const uint32_t free_now = cache.n_cells() - cache.n_used();
  if (n > free_now + own)
    return resource_exhausted("state: the file holds " + std::to_string(n) + " tokens, only " + std::to_string(free_now + own) +
                              " cells are free for it");
  std::vector<uint32_t> cells(n);
  std::vector<float> logits;
  auto drop_target = [&] {
    if (want_kind == StateKind::Context) cache.clear();
    else cache.seq_rm(dest, -1, -1);
  };
  if (n <= free_now) {
    // §5.2: rows go into free cells; nothing observable changes until the commit.
    KV_RETURN_IF_ERROR(cache.find_free(n, cells.data()));
    const RowDest dest(cache, info.layout, cells);
    KV_RETURN_IF_ERROR(r.walk_rest(&info, &dest, opt.pool, &logits));
    drop_target();
  } else {
    // §5.4: verify everything first, then make room and read again.
    KV_RETURN_IF_ERROR(r.walk_rest(&info, nullptr, opt.pool, nullptr));
    drop_target();
    KV_RETURN_IF_ERROR(cache.find_free(n, cells.data()));
    const RowDest dest(cache, info.layout, cells);
    Status s = r.walk_rest(&info, &dest, opt.pool, &logits);
    if (!s.is_ok()) return Status(s.code(), s.message() + " (the file changed during the restore; the target was left empty)");
    res.two_pass = true;
  }
  // Commit.
  for (uint32_t k = 0; k < n; ++k) {
    if (want_kind == StateKind::Context) cache.cell_assign_seqs(cells[k], info.cell_pos[k], info.cell_seqs[k], info.cell_token[k]);
    else cache.cell_assign(cells[k], info.cell_pos[k], dest, info.cell_token[k]);
  }
  res.n_tokens = n;
  res.n_bytes = src.size();
  if (want_kind == StateKind::Sequence) {
    res.tokens = info.cell_token;
    res.positions = info.cell_pos;
  }
  res.logits = std::move(logits);
  return res;
}

}  // namespace

Result<StateLoadResult> state_read_seq(KvCache& cache, SeqId dest, const ModelFingerprint& live, ByteSource& src, const StateLoadOptions& opt) {
  return restore(cache, dest, StateKind::Sequence, live, src, opt);
}

Result<StateLoadResult> state_read_all(KvCache& cache, const ModelFingerprint& live, ByteSource& src, const StateLoadOptions& opt) {
  return restore(cache, -1, StateKind::Context, live, src, opt);
}

Result<StateInfo> state_inspect(ByteSource& src, ThreadPool* pool) {
  Reader r(src);
  StateInfo info;
  KV_RETURN_IF_ERROR(r.read_prefix(&info));
  KV_RETURN_IF_ERROR(r.walk_rest(&info, nullptr, pool, nullptr));
  return info;
}

}  // namespace kvstash
