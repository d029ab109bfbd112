#!/usr/bin/env bash
# akidbd next to HF text-embeddings-inference, side by side in one run: ../shared/peers/side_by_side.py with
# akidbd's embedding cache off (the load repeats its texts: with the cache akidbd would answer from memory, which
# measures the cache, not the model). Everything else is akidbd's defaults.
#
#   tools/side-by-side.sh --tei-bin PATH [--only akidbd-default,tei] [--seconds 15] [--out FILE]
#
# Needs `make build`, a Python with msgpack, numpy, onnxruntime and tokenizers ($PYTHON, default python3), and a
# TEI binary built as ../shared/peers/README.md says. The script itself stays in ../shared; a copy in target/
# gets one change: akidbd is started with --config target/side-by-side.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=../shared/peers/side_by_side.py
[ -f "$SCRIPT" ] || { echo "side-by-side: $SCRIPT is missing" >&2; exit 2; }
[ -x target/release/akidbd ] || { echo "side-by-side: run \`make build\` first" >&2; exit 2; }
printf '[cache]\nmax_bytes = 0\n' > target/side-by-side.toml
sed 's|"target/release/akidbd"), "--socket", sock\]|"target/release/akidbd"), "--socket", sock, "--config", "target/side-by-side.toml"]|' \
  "$SCRIPT" > target/side_by_side.py
grep -q 'target/side-by-side.toml' target/side_by_side.py \
  || { echo "side-by-side: $SCRIPT changed; cannot turn akidbd's cache off in it" >&2; exit 2; }
exec "${PYTHON:-python3}" target/side_by_side.py --project . --fixture ../shared/fixtures/minilm/public.jsonl \
  --fp32 ../shared/models/all-MiniLM-L6-v2-fp32 --ort-lib target/onnxruntime/libonnxruntime.so.1.32.0 "$@"
