#!/usr/bin/env bash
# The GPU path, proven in one short run on a machine with an NVIDIA GPU:
#   - starts akidbd with a tensorrt device (fallback: cuda) and prints the execution provider really in use;
#   - warm-up time with a cold and then a warm TensorRT engine cache;
#   - the NVML readings the monitor reports;
#   - accuracy against the fixtures (the strict fp32 model from ../shared when present, else the default model),
#     via the integration test that compares the daemon with sentence-transformers' reference embeddings.
# On a machine without an NVIDIA GPU it says so and exits 0.
#
# Needs: the `onnxruntime-gpu` wheel's library (pass ORT_GPU_LIB=/path/libonnxruntime.so.1.x, or put the wheel's
# onnxruntime/capi folder on LD_LIBRARY_PATH with CUDA 12 / cuDNN 9 / TensorRT 10 libraries), a release build.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check."
  exit 0
fi
nvidia-smi -L

ORT_GPU_LIB=${ORT_GPU_LIB:-}
if [ -z "$ORT_GPU_LIB" ]; then
  echo "gpu-check: set ORT_GPU_LIB to an onnxruntime-gpu build of libonnxruntime.so (the PyPI CPU wheel has no CUDA/TensorRT)" >&2
  exit 1
fi
tools/setup.sh
cargo build --release --bins || exit 1

work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null; rm -rf "$work"' EXIT
model=${MODEL_DIR:-$PWD/models/all-MiniLM-L6-v2}
[ -f ../shared/models/all-MiniLM-L6-v2-fp32/model.onnx ] && model=$(cd ../shared/models/all-MiniLM-L6-v2-fp32 && pwd)

cat > "$work/akidb.toml" <<TOML
[server]
socket = "$work/embed.sock"
[model]
dir = "$model"
[ort]
library_path = "$ORT_GPU_LIB"
[monitor]
interval_ms = 200
[[devices]]
ep = "tensorrt"
device_id = 0
fallback = ["cuda"]
[devices.tensorrt]
engine_cache_dir = "$work/trt-cache"
fp16 = false
TOML

start_daemon() { # label
  local t0 t1
  t0=$(date +%s.%N)
  target/release/akidbd --config "$work/akidb.toml" > "$work/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1800); do
    target/release/akictl --socket "$work/embed.sock" health 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "gpu-check: akidbd exited:"; cat "$work/$1.log"; exit 1; }
    sleep 0.2
  done
  t1=$(date +%s.%N)
  printf 'warm-up with a %s engine cache: %.1f s\n' "$1" "$(echo "$t1 - $t0" | bc)"
}

start_daemon cold
target/release/akictl --socket "$work/embed.sock" status
kill "$pid"; wait "$pid" 2>/dev/null
echo "engine cache: $(find "$work/trt-cache" -type f | wc -l) files in $(ls "$work/trt-cache")"
start_daemon warm
target/release/akictl --socket "$work/embed.sock" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
d = s["devices"][0]
print("execution provider in use:", d["ep"])
print("NVML readings:", json.dumps(d.get("sensors"), indent=1))
'
target/release/akictl --socket "$work/embed.sock" bench --concurrency 32 --duration 10
target/release/akictl --socket "$work/embed.sock" bench --concurrency 1 --duration 5

# Accuracy: the daemon against the reference embeddings of the fixtures, on this socket.
target/pyenv/bin/python - "$work/embed.sock" <<'PY'
import json, math, os, sys
# The akidb-client package that `make setup` installed into target/pyenv.
from akidb_client import Client
path = "../shared/fixtures/minilm/public.jsonl"
if not os.path.exists(path):
    path = "tests/data/minilm-sample.jsonl"
rows = [json.loads(l) for l in open(path)]
worst = 1.0
with Client(sys.argv[1]) as c:
    for i in range(0, len(rows), 16):
        chunk = rows[i:i + 16]
        got = c.embed([r["text"] for r in chunk])
        for v, r in zip(got, chunk):
            v = [float(x) for x in v]; ref = r["embedding"]
            cos = sum(a * b for a, b in zip(v, ref)) / math.sqrt(sum(a * a for a in v) * sum(b * b for b in ref))
            worst = min(worst, cos)
print(f"accuracy on {path}: min cosine {worst:.6f} over {len(rows)} texts")
PY
