#!/usr/bin/env bash
# Sets up, builds, and runs the main job: a short greedy generation with `kvstash run` on stories260K.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export KVSTASH_MODELS="${KVSTASH_MODELS:-$(cd .. && pwd)/shared/models}"
model="$KVSTASH_MODELS/stories260K.gguf"
if [ ! -f "$model" ]; then
  echo "error: model '$model' not found (set KVSTASH_MODELS to the shared/models directory)" >&2
  exit 1
fi
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j "$(nproc)" --target kvstash
./build/release/kvstash run -m "$model" -p "${1:-Once upon a time}" -n 64 --temp 0
