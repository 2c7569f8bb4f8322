// Test-binary-wide allocation counter: every global operator new form is replaced and counted,
// so tests can assert that a hot path does not allocate.
#include "alloc_counter.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace {
std::atomic<int64_t> g_n_allocs{0};
std::atomic<int64_t> g_bytes{0};
std::atomic<std::size_t> g_limit{SIZE_MAX};  // AllocLimit
std::atomic<std::size_t> g_largest_refused{0};

bool over_limit(std::size_t n) noexcept {
  if (n <= g_limit.load(std::memory_order_relaxed)) return false;
  std::size_t prev = g_largest_refused.load(std::memory_order_relaxed);
  while (prev < n && !g_largest_refused.compare_exchange_weak(prev, n, std::memory_order_relaxed)) {
  }
  return true;
}

void* counted_malloc(std::size_t n) noexcept {
  g_n_allocs.fetch_add(1, std::memory_order_relaxed);
  if (over_limit(n)) return nullptr;
  g_bytes.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* counted_aligned(std::size_t n, std::align_val_t a) noexcept {
  g_n_allocs.fetch_add(1, std::memory_order_relaxed);
  if (over_limit(n)) return nullptr;
  g_bytes.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
  const auto al = static_cast<std::size_t>(a);
  const std::size_t size = n == 0 ? al : (n + al - 1) / al * al;  // aligned_alloc wants a multiple
  return std::aligned_alloc(al, size);
}
// Out of line so GCC's -Wmismatched-new-delete does not see free() of an operator-new pointer
// (every form here allocates with malloc/aligned_alloc, so free() is the matching release).
[[gnu::noinline]] void release(void* p) noexcept { std::free(p); }
void* or_throw(void* p) {
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return or_throw(counted_malloc(n)); }
void* operator new[](std::size_t n) { return or_throw(counted_malloc(n)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new(std::size_t n, std::align_val_t a) { return or_throw(counted_aligned(n, a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return or_throw(counted_aligned(n, a)); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_aligned(n, a);
}
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }

namespace kvstash::test {
int64_t n_allocs() { return g_n_allocs.load(std::memory_order_relaxed); }
int64_t bytes_allocated() { return g_bytes.load(std::memory_order_relaxed); }

AllocLimit::AllocLimit(size_t max_bytes) {
  g_largest_refused.store(0, std::memory_order_relaxed);
  g_limit.store(max_bytes, std::memory_order_relaxed);
}
AllocLimit::~AllocLimit() { g_limit.store(SIZE_MAX, std::memory_order_relaxed); }
size_t AllocLimit::largest_refused() const { return g_largest_refused.load(std::memory_order_relaxed); }
}  // namespace kvstash::test
