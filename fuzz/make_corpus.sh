#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/corpus/ with kvstash's own tools: kvstash_fuzz_corpus
# (fuzz/make_corpus.cpp: GGUF writer, model generator, state writer, request/text/chat lists)
# and `kvstash mkmodel`. Files that fuzzing found and that were added by hand (crash
# reproducers: fuzz/corpus/<target>/regress-*) are kept.
#   usage: fuzz/make_corpus.sh [BUILD_DIR]   (default build/fuzz, configured and built if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/fuzz}"
if [ "$build" = build/fuzz ]; then
  launcher=()
  if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  cmake --preset fuzz "${launcher[@]}" >/dev/null
  cmake --build --preset fuzz -j "${KVSTASH_JOBS:-$(nproc)}" --target kvstash kvstash_fuzz_corpus
fi
out=fuzz/corpus
for t in fuzz_gguf fuzz_state fuzz_http_json fuzz_tokenizer fuzz_chat; do
  mkdir -p "$out/$t"
  find "$out/$t" -type f ! -name 'regress-*' -delete
done
"$build/fuzz/kvstash_fuzz_corpus" "$out"
# Two models from the CLI, with the small vocabulary the generator wrote.
"$build/kvstash" mkmodel --preset tiny-llama --type q4_0 --tied --n-embd 32 --n-layer 1 --n-head 1 --n-head-kv 1 --n-ff 32 \
  --vocab "$out/fuzz_gguf/micro-vocab.gguf" -o "$out/fuzz_gguf/mkmodel-llama-q4_0-tied.gguf"
"$build/kvstash" mkmodel --preset tiny-llama --type f16 --tied --n-embd 32 --n-layer 2 --n-head 2 --n-head-kv 1 --n-ff 32 --n-rot 8 \
  --vocab "$out/fuzz_gguf/micro-vocab.gguf" -o "$out/fuzz_gguf/mkmodel-llama-f16-tied.gguf"
du -sh "$out"
for t in "$out"/*/; do echo "$(basename "$t"): $(find "$t" -type f | wc -l) files"; done
