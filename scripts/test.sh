#!/usr/bin/env bash
# Sets up, builds and runs every test: a Release build, then an AddressSanitizer + UBSan build,
# then the tests that run threads (server, scheduler, thread pool) under ThreadSanitizer, then
# every libFuzzer target for KVSTASH_FUZZ_SECONDS (default 30) each.
# Shared fixtures come from $KVSTASH_MODELS (default: ../shared/models beside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export KVSTASH_MODELS="${KVSTASH_MODELS:-$(cd .. && pwd)/shared/models}"
if [ ! -f "$KVSTASH_MODELS/stories260K.gguf" ]; then
  echo "error: test fixtures not found in '$KVSTASH_MODELS' (set KVSTASH_MODELS to the shared/models directory)" >&2
  exit 1
fi
# The OpenAI-client test (server.OpenAiNodeClient) runs the official `openai` npm package.
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "error: node and npm are required: the server test suite runs the official 'openai' npm client" >&2
  echo "       (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
echo "== npm install openai (into build/npm) =="
mkdir -p build/npm
npm install --prefix build/npm --no-audit --no-fund --loglevel=error openai@4
jobs="${KVSTASH_JOBS:-$(nproc)}"
ctest_prefix=()  # a command that ctest runs under (see the TSan suite)
run_suite() {  # name, build dir, ctest -R regex ("" for every test), cmake args...
  local name=$1 dir=$2 regex=$3
  shift 3
  echo "== $name =="
  cmake -S . -B "$dir" -G Ninja -DKVSTASH_MODELS_DIR="$KVSTASH_MODELS" -DKVSTASH_NPM_DIR="$PWD/build/npm" "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && "${ctest_prefix[@]}" ctest --output-on-failure -j "$jobs" --timeout 900 ${regex:+-R "$regex"})
}
run_suite "release" build/release "" -DCMAKE_BUILD_TYPE=Release
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite "asan+ubsan" build/asan "" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSTASH_SANITIZE=ON -DKVSTASH_BENCH=OFF
# ThreadSanitizer: the server (the tests spawn the TSan-built kvstash, which inherits these
# options; ServerProcess fails a test whose server logged a report), the scheduler, the thread
# pool and the kernels' thread splits. A report makes the process exit 66 (TSan's default).
# tests/tsan.supp holds the one proven false positive inside cpp-httplib. GCC 12's TSan cannot
# place its shadow memory when the kernel randomises mmap with more than 28 bits
# (vm.mmap_rnd_bits): then the tests run without address randomisation (setarch -R).
if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ]; then ctest_prefix=(setarch "$(uname -m)" -R); fi
TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  run_suite "tsan" build/tsan '^(Server|SlotSaveScenario\.|SchedulerTest\.|ThreadPool\.|Kernels\.BatchInvariant|StoriesBatchInvariance\.|server\.OpenAiNodeClient)' \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSTASH_SANITIZE=thread -DKVSTASH_BENCH=OFF
# libFuzzer: every target of fuzz/ for a bounded time over its seed corpus (clang, ASan + UBSan);
# any crash, leak, timeout or sanitizer report fails the run (scripts/fuzz.sh, fuzz/README.md).
echo "== fuzz =="
KVSTASH_JOBS="$jobs" ./scripts/fuzz.sh "${KVSTASH_FUZZ_SECONDS:-30}"
