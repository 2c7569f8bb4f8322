#!/usr/bin/env bash
# Sets up, builds, and runs the main job: `kvstash serve` on stories260K (Ctrl-C stops it).
# Extra arguments go to `kvstash serve` (for example: --port 9000 -np 2 --slot-save-path ./slots).
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
echo "starting kvstash serve (try: curl -s http://127.0.0.1:8080/completion -d '{\"prompt\":\"Once upon a time\",\"n_predict\":32}')"
exec ./build/release/kvstash serve -m "$model" -np 4 -c 2048 --metrics "$@"
