#include "state/state_hash.h"

#if KVSTASH_XXH_DISPATCH
#include <xxh_x86dispatch.h>
#endif

#include <cassert>

namespace kvstash {
namespace {

// The dispatched entry points pick their implementation on first use without synchronisation;
// doing it once under a function-local static makes first use from several threads race-free.
void init_dispatch() {
#if KVSTASH_XXH_DISPATCH
  static const bool ready = (XXH3_64bits_dispatch(nullptr, 0), true);
  (void)ready;
#endif
}

}  // namespace

uint64_t state_hash(const void* p, size_t n) {
#if KVSTASH_XXH_DISPATCH
  init_dispatch();
  return XXH3_64bits_dispatch(p, n);
#else
  return XXH3_64bits(p, n);
#endif
}

StateHasher::StateHasher() : st_(XXH3_createState()) {
  assert(st_ && "XXH3_createState: out of memory");
  init_dispatch();
  XXH3_64bits_reset(st_);
}

StateHasher::~StateHasher() { XXH3_freeState(st_); }

void StateHasher::reset() { XXH3_64bits_reset(st_); }

void StateHasher::update(const void* p, size_t n) {
#if KVSTASH_XXH_DISPATCH
  XXH3_64bits_update_dispatch(st_, p, n);
#else
  XXH3_64bits_update(st_, p, n);
#endif
}

uint64_t StateHasher::digest() const { return XXH3_64bits_digest(st_); }

}  // namespace kvstash
