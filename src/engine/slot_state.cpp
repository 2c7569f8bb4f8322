#include "engine/slot_state.h"

#include <fcntl.h>

#include <algorithm>
#include <numeric>

namespace kvstash {
namespace {

// default_file_io(), but a final symlink is never followed: a link planted in the save directory
// after the caller resolved the path cannot redirect a read.
class NoFollowIo final : public FileIo {
 public:
  int open(const char* path, int flags, int mode) override {
    if (!(flags & O_DIRECTORY)) flags |= O_NOFOLLOW;
    return base().open(path, flags, mode);
  }
  long write(int fd, const void* buf, size_t n) override { return base().write(fd, buf, n); }
  long pread(int fd, void* buf, size_t n, uint64_t off) override { return base().pread(fd, buf, n, off); }
  int fsync(int fd) override { return base().fsync(fd); }
  int close(int fd) override { return base().close(fd); }
  int rename(const char* from, const char* to) override { return base().rename(from, to); }
  int unlink(const char* path) override { return base().unlink(path); }
  int fstat_size(int fd, uint64_t* size) override { return base().fstat_size(fd, size); }

 private:
  static FileIo& base() { return default_file_io(); }
};

NoFollowIo& no_follow_io() {
  static NoFollowIo io;
  return io;
}

// Tokens of a kind-1 file ordered by position; checks they can back a slot.
Status slot_tokens(const std::vector<int32_t>& cell_pos, const std::vector<int32_t>& cell_token, int32_t n_vocab,
                   int32_t n_ctx_slot, std::vector<int32_t>* out) {
  const size_t n = cell_pos.size();
  if (cell_token.size() != n) return corruption("Invalid tokens in slot save file: " + std::to_string(cell_token.size()) + " tokens for " + std::to_string(n) + " cells");
  if (n > size_t(n_ctx_slot))
    return invalid_argument("Restored prompt does not fit in the slot context: " + std::to_string(n) + " tokens, slot context " +
                            std::to_string(n_ctx_slot));
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cell_pos[a] < cell_pos[b]; });
  out->resize(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t k = order[i];
    if (cell_pos[k] != int32_t(i))
      return invalid_argument("Invalid tokens in slot save file: positions are not 0.." + std::to_string(n - 1) + " (position " +
                              std::to_string(i) + " holds " + std::to_string(cell_pos[k]) + ")");
    if (cell_token[k] < 0 || cell_token[k] >= n_vocab)
      return invalid_argument("Invalid tokens in slot save file: token id " + std::to_string(cell_token[k]) + " at position " +
                              std::to_string(i) + ", expected 0.." + std::to_string(n_vocab - 1));
    (*out)[i] = cell_token[k];
  }
  return Status::ok();
}

}  // namespace

Result<SlotSaveInfo> slot_state_save(const KvCache& cache, SeqId seq, const ModelFingerprint& fp, const float* logits,
                                     uint32_t n_logits, const std::string& path, bool durable, ThreadPool* pool) {
  StateSaveOptions opt;
  opt.durable = durable;
  opt.logits = logits;
  opt.n_logits = logits ? n_logits : 0;
  opt.io = &no_follow_io();
  opt.pool = pool;
  KV_ASSIGN_OR_RETURN(StateSaveResult r, state_save_seq_file(cache, seq, fp, path, opt));
  return SlotSaveInfo{r.n_tokens, r.n_bytes};
}

Result<SlotRestoreInfo> slot_state_restore(KvCache& cache, SeqId seq, const ModelFingerprint& fp, int32_t n_vocab,
                                           int32_t n_ctx_slot, const std::string& path, ThreadPool* pool) {
  // One open file for both passes: a rename over `path` meanwhile cannot mix two files.
  KV_ASSIGN_OR_RETURN(FdSource src, FdSource::open(no_follow_io(), path));
  KV_ASSIGN_OR_RETURN(StateInfo info, state_inspect(src, pool));
  if (info.kind != StateKind::Sequence) return invalid_argument("state: the file holds a whole context, expected one sequence");
  SlotRestoreInfo out;
  KV_RETURN_IF_ERROR(slot_tokens(info.cell_pos, info.cell_token, n_vocab, n_ctx_slot, &out.tokens));
  StateLoadOptions lo;
  lo.io = &no_follow_io();
  lo.pool = pool;
  KV_ASSIGN_OR_RETURN(StateLoadResult r, state_read_seq(cache, seq, fp, src, lo));
  // The reader re-verified every checksum; the cells must be the ones checked above.
  std::vector<int32_t> again;
  if (Status s = slot_tokens(r.positions, r.tokens, n_vocab, n_ctx_slot, &again); !s.is_ok() || again != out.tokens) {
    cache.seq_rm(seq, -1, -1);
    return corruption("state: '" + path + "' changed while it was restored; the slot was left empty");
  }
  if (r.logits.size() == size_t(n_vocab)) out.logits = std::move(r.logits);
  out.n_bytes = r.n_bytes;
  return out;
}

Result<StateInfo> slot_state_inspect(const std::string& path) {
  KV_ASSIGN_OR_RETURN(FdSource src, FdSource::open(no_follow_io(), path));
  return state_inspect(src);
}

}  // namespace kvstash
