#!/usr/bin/env bash
# Builds the `fuzz` preset (clang, libFuzzer, ASan + UBSan) and runs every fuzz target for
# SECONDS (default 30) over a fresh copy of its seed corpus (fuzz/corpus/<target>/).
# Fails (exit 1) on any crash, leak, timeout, out-of-memory or sanitizer report; the inputs
# that caused them are left in build/fuzz/artifacts/<target>/ and the logs in
# build/fuzz/logs/<target>.log. Prints per target the executions, crashes, coverage and corpus.
#   usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
# KVSTASH_MODELS: the shared vocabularies fuzz_tokenizer reads (default ../shared/models).
# KVSTASH_JOBS: build parallelism (default: all CPUs). FUZZ_TARGETS: a subset, space-separated.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi
export KVSTASH_MODELS="${KVSTASH_MODELS:-$(cd .. && pwd)/shared/models}"
if [ ! -f "$KVSTASH_MODELS/ggml-vocab-llama-spm.gguf" ]; then
  echo "error: fuzz fixtures not found in '$KVSTASH_MODELS' (set KVSTASH_MODELS to the shared/models directory)" >&2
  exit 1
fi
if ! command -v clang++ >/dev/null 2>&1; then
  echo "error: clang++ is required for libFuzzer (Debian: apt-get install clang libclang-rt-dev)" >&2
  exit 1
fi
launcher=()
if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
echo "== build (preset fuzz) =="
cmake --preset fuzz "${launcher[@]}" >/dev/null
cmake --build --preset fuzz -j "${KVSTASH_JOBS:-$(nproc)}"

targets="${FUZZ_TARGETS:-fuzz_gguf fuzz_state fuzz_http_json fuzz_tokenizer fuzz_chat}"
work=build/fuzz/corpus-work
arts=build/fuzz/artifacts
logs=build/fuzz/logs
mkdir -p "$logs"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
summary=()
details=()
failed=0
for t in $targets; do
  echo "== $t: ${secs}s =="
  rm -rf "${work:?}/$t" "${arts:?}/$t"
  mkdir -p "$work/$t" "$arts/$t"
  cp -r "fuzz/corpus/$t/." "$work/$t/"
  dict=()
  if [ -f "fuzz/$t.dict" ]; then dict=(-dict="fuzz/$t.dict"); fi
  rc=0
  "build/fuzz/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 \
    "${dict[@]}" -artifact_prefix="$arts/$t/" "$work/$t" >"$logs/$t.log" 2>&1 || rc=$?
  n_artifacts=$(find "$arts/$t" -type f | wc -l)
  crashes=$n_artifacts
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  if grep -q -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|==kvstash-fuzz==" "$logs/$t.log" && [ "$crashes" -eq 0 ]; then crashes=1; fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  summary+=("$t ${execs:-0} $crashes")
  details+=("$t execs ${execs:-0} exec/s ${rate:-0} cov ${cov:-?} ft ${ft:-?} corpus ${corp:-?}")
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "FAILED: $t (exit $rc): see $logs/$t.log and $arts/$t/" >&2
    grep -E "==kvstash-fuzz==|ERROR: |runtime error:|SUMMARY: |^  " "$logs/$t.log" | head -20 >&2 || true
  fi
done
echo "== coverage =="
printf '%s\n' "${details[@]}"
echo "== summary: target execs crashes =="
printf '%s\n' "${summary[@]}"
exit "$failed"
