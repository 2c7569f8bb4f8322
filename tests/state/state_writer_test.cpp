// The writer's fast paths (src/state/state_writer.cpp, byte_io.cpp): hashing KV sections on a
// second thread of StateSaveOptions::pool must write exactly the bytes of the single-threaded
// writer, a failing write must still fail the save cleanly, and FdSink must pass large writes
// (KV rows) straight to the file in order while gathering the small ones.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "core/threadpool.h"
#include "kv/kv_cache.h"
#include "state/state.h"

namespace kvstash {
namespace {

namespace fs = std::filesystem;

const ModelFingerprint& fingerprint() {
  static const ModelFingerprint fp = {"llama", "writer-test", 21, 22, 23, 24, 1000};
  return fp;
}

// 4 layers x (K f16 [2 x 64], V q8_0 [128]); sequence 3 holds n positions in cells that are
// contiguous, or every third cell when `scattered`.
std::unique_ptr<KvCache> cache_with(uint32_t n, bool scattered) {
  std::vector<std::vector<KvLayout::StreamRequest>> req(4);
  for (auto& l : req) {
    l.push_back({KvStream::K, DType::F16, 128, 2});
    l.push_back({KvStream::V, DType::Q8_0, 128, 1});
  }
  KvLayout L;
  EXPECT_EQ(KvLayout::make(3 * n + 8, req, &L), "");
  auto c = std::make_unique<KvCache>(L);
  for (uint32_t il = 0; il < L.n_layers(); ++il)
    for (uint32_t si = 0; si < 2; ++si) {
      uint8_t* p = c->row(il, si, 0);
      for (size_t i = 0; i < L.layer(il).streams[si].row_bytes * L.n_cells(); ++i) p[i] = static_cast<uint8_t>((i * 40503u + il * 7u + si) >> 5);
    }
  for (uint32_t k = 0; k < n; ++k) c->cell_assign(scattered ? 3 * k + 1 : k, static_cast<int32_t>(k), 3, static_cast<int32_t>(k % 1000));
  return c;
}

std::vector<uint8_t> write_seq(const KvCache& c, ThreadPool* pool, const std::vector<float>* logits = nullptr) {
  std::vector<uint8_t> out;
  BufferSink sink(&out);
  StateSaveOptions o;
  o.created_ms = 1700000000000ull;
  o.pool = pool;
  if (logits) {
    o.logits = logits->data();
    o.n_logits = static_cast<uint32_t>(logits->size());
  }
  auto r = state_write_seq(c, 3, fingerprint(), o, sink);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->n_bytes, out.size());
  return out;
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

TEST(StateWriter, HashingOnThePoolWritesTheSameBytes) {
  ThreadPool pool2(2), pool3(3);
  const std::vector<float> logits(1000, 0.5f);
  for (uint32_t n : {0u, 1u, 37u, 1500u})
    for (bool scattered : {false, true}) {
      auto c = cache_with(n, scattered);
      const std::vector<uint8_t> ref = write_seq(*c, nullptr, &logits);
      const std::string what = std::to_string(n) + (scattered ? " scattered" : " contiguous");
      EXPECT_EQ(write_seq(*c, &pool2, &logits), ref) << what;
      EXPECT_EQ(write_seq(*c, &pool3, &logits), ref) << what;
      // And the file restores into another cache, bit for bit (the trailers are the right ones).
      MemSource src(ref.data(), ref.size());
      auto d = cache_with(n, !scattered);
      d->clear();
      auto r = state_read_seq(*d, 3, fingerprint(), src, {});
      ASSERT_TRUE(r.is_ok()) << what << ": " << r.status().to_string();
      ASSERT_EQ(r->n_tokens, n);
    }
  // Through a file, durable and not.
  const fs::path dir = fs::temp_directory_path() / ("kvstash_writer_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto c = cache_with(900, true);
  const std::vector<uint8_t> ref = write_seq(*c, nullptr);
  for (bool durable : {true, false}) {
    StateSaveOptions o;
    o.created_ms = 1700000000000ull;
    o.durable = durable;
    o.pool = &pool2;
    ASSERT_TRUE(state_save_seq_file(*c, 3, fingerprint(), (dir / "s.state").string(), o).is_ok());
    EXPECT_EQ(read_file(dir / "s.state"), ref) << (durable ? "durable" : "no fsync");
  }
  fs::remove_all(dir);
}

// Fails every write after the first `ok_writes` with ENOSPC; records the size of each write.
class SizesIo final : public FileIo {
 public:
  explicit SizesIo(int ok_writes = 1 << 30) : ok_writes_(ok_writes) {}
  std::vector<size_t> sizes;
  int open(const char* path, int flags, int mode) override { return posix_file_io().open(path, flags, mode); }
  long write(int fd, const void* buf, size_t n) override {
    if (static_cast<int>(sizes.size()) >= ok_writes_) {
      errno = ENOSPC;
      return -1;
    }
    sizes.push_back(n);
    return posix_file_io().write(fd, buf, n);
  }
  long pread(int fd, void* buf, size_t n, uint64_t off) override { return posix_file_io().pread(fd, buf, n, off); }
  int fsync(int fd) override { return posix_file_io().fsync(fd); }
  int close(int fd) override { return posix_file_io().close(fd); }
  int rename(const char* a, const char* b) override { return posix_file_io().rename(a, b); }
  int unlink(const char* path) override { return posix_file_io().unlink(path); }
  int fstat_size(int fd, uint64_t* size) override { return posix_file_io().fstat_size(fd, size); }

 private:
  int ok_writes_;
};

TEST(StateWriter, AFailedWriteWithThePoolFailsTheSaveAndLeavesNoFile) {
  ThreadPool pool(2);
  const fs::path dir = fs::temp_directory_path() / ("kvstash_writer_fail_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto c = cache_with(1500, false);  // K rows: 1500 x 256 B = 375 KiB: written directly
  SizesIo count;
  StateSaveOptions co;
  co.io = &count;
  co.pool = &pool;
  ASSERT_TRUE(state_save_seq_file(*c, 3, fingerprint(), (dir / "f.state").string(), co).is_ok());
  const int n_writes = static_cast<int>(count.sizes.size());
  ASSERT_GE(n_writes, 8);  // 4 direct K sections, their flushes, the last flush
  fs::remove(dir / "f.state");
  for (int ok : {0, 1, 2, n_writes / 2, n_writes - 1}) {
    SizesIo io(ok);
    StateSaveOptions o;
    o.io = &io;
    o.pool = &pool;
    auto r = state_save_seq_file(*c, 3, fingerprint(), (dir / "f.state").string(), o);
    ASSERT_FALSE(r.is_ok()) << ok;
    EXPECT_EQ(r.status().code(), StatusCode::ResourceExhausted) << ok;
    EXPECT_TRUE(fs::is_empty(dir)) << ok;
  }
  fs::remove_all(dir);
}

TEST(StateWriter, FdSinkWritesLargePiecesDirectlyAndInOrder) {
  const fs::path dir = fs::temp_directory_path() / ("kvstash_fdsink_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / "b.bin";
  SizesIo io;
  const int fd = io.open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  const size_t big = FdSink::kDirectBytes, huge = (size_t(1) << 20) + 3;
  std::vector<uint8_t> want;
  {
    FdSink sink(io, fd, path.string());
    for (size_t n : {size_t(10), size_t(20), big, size_t(5), huge, size_t(7), big - 1, size_t(3)}) {
      std::vector<uint8_t> piece(n);
      for (size_t i = 0; i < n; ++i) piece[i] = static_cast<uint8_t>(want.size() + i * 7);
      ASSERT_TRUE(sink.write(piece.data(), n).is_ok());
      want.insert(want.end(), piece.begin(), piece.end());
    }
    ASSERT_TRUE(sink.flush().is_ok());
    EXPECT_EQ(sink.n_written(), want.size());
  }
  io.close(fd);
  // Small pieces gathered; a piece of kDirectBytes or more flushes them and goes alone.
  EXPECT_EQ(io.sizes, (std::vector<size_t>{30, big, 5, huge, 7 + (big - 1) + 3}));
  EXPECT_EQ(read_file(path), want);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvstash
