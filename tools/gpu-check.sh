#!/usr/bin/env bash
# The GPU path in one short run (under 8 minutes) on a machine with an NVIDIA GPU. Every check can fail:
#   1. TensorRT is the provider in use (no fallback is configured, so a silent fall to CUDA or the CPU fails),
#      in fp16 (the default), and status says so;
#   2. accuracy of the TensorRT fp16 vectors against sentence-transformers' references (>= 0.999, printed);
#   3. the cold engine build time; then READY from the warm cache in <= 5 s with no rebuild, checked from the
#      cache directory's files (same files, same modification times), not only from timing;
#   4. changed weights (a byte of an external data file) force a new engine under a new cache key;
#   5. NVML readings (temperature, power) in `akictl status`;
#   6. throughput of TensorRT vs CUDA vs CPU on the same texts.
# One summary table at the end.
#
# Exit status: 0 every check passed; 1 a check failed; 2 it cannot run here (no GPU, no GPU build of ONNX
# Runtime, no `make setup`); 3 the CUDA checks passed but TensorRT's libraries are absent, so TensorRT was NOT
# checked.
#
# Needs: `make setup` done (target/pyenv for the accuracy check; nothing is downloaded here), a GPU build of ONNX
# Runtime (ORT_GPU_LIB=/path/to/libonnxruntime.so.1.x from the onnxruntime-gpu wheel's onnxruntime/capi folder,
# whose CUDA 12 / cuDNN 9 / TensorRT 10 libraries must be on LD_LIBRARY_PATH). No torch.
set -uo pipefail
cd "$(dirname "$0")/.."

fail=0
declare -a rows=()
row() { rows+=("$(printf '%-44s %-26s %s' "$1" "$2" "$3")"); [ "$3" = FAIL ] && fail=1; }
say() { echo "gpu-check: $*"; }

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no NVIDIA GPU on this machine (nvidia-smi finds none): nothing was checked"; exit 2
fi
nvidia-smi -L
ORT_GPU_LIB=${ORT_GPU_LIB:-}
if [ -z "$ORT_GPU_LIB" ] || [ ! -f "$ORT_GPU_LIB" ]; then
  say "set ORT_GPU_LIB to an onnxruntime-gpu build of libonnxruntime.so (the PyPI CPU wheel has no CUDA/TensorRT)"; exit 2
fi
PY=target/pyenv/bin/python
[ -x "$PY" ] || { say "run \`make setup\` first (target/pyenv)"; exit 2; }
cargo build --release --bins -q || { say "release build failed"; exit 2; }

# TensorRT's libraries: where the loader would find them (LD_LIBRARY_PATH, the ORT library's folder, ldconfig).
trt_lib=$( { tr ':' '\n' <<<"${LD_LIBRARY_PATH:-}"; dirname "$ORT_GPU_LIB"; } | while read -r d; do
  [ -n "$d" ] && ls "$d"/libnvinfer.so.* 2>/dev/null; done | head -1)
[ -z "$trt_lib" ] && trt_lib=$(ldconfig -p 2>/dev/null | awk '/libnvinfer\.so/ {print $NF; exit}')
have_trt=0; [ -n "$trt_lib" ] && have_trt=1

work=$(mktemp -d)
pid=""
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
model=$PWD/models/all-MiniLM-L6-v2
# The default model is the exact fp32 MiniLM; AKIDB_FIXTURES may name a larger JSON-lines reference set.
refs=$(realpath "${AKIDB_FIXTURES:-tests/data/minilm-sample.jsonl}")
"$PY" -c 'import json,sys; [print(json.loads(l)["text"].replace("\n"," ")) for l in open(sys.argv[1])]' "$refs" > "$work/texts.txt"

config() { # name ep model-dir [extra toml]
  cat > "$work/$1.toml" <<TOML
[server]
socket = "$work/$1.sock"
[model]
dir = "$3"
${4:-}
[ort]
library_path = "$ORT_GPU_LIB"
[monitor]
interval_ms = 200
[batcher]
max_batch_size = 64
max_batch_tokens = 16384
[[devices]]
ep = "$2"
device_id = 0
[devices.tensorrt]
engine_cache_dir = "$work/trt-cache"
profile_batch = [1, 16, 64]
profile_seq = [1, 128, 256]
TOML
}

# Starts a daemon; sets `ready_s`. Returns non-zero (with its log) when it exits instead of becoming ready.
start() { # name
  local t0 t1
  t0=$(date +%s.%N)
  target/release/akidbd --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1500); do
    target/release/akictl --socket "$work/$1.sock" health 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { say "akidbd ($1) exited:"; tail -20 "$work/$1.log"; pid=""; return 1; }
    sleep 0.2
  done
  t1=$(date +%s.%N)
  ready_s=$(echo "$t1 - $t0" | bc)
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""; }
field() { # socket python-expression over the status JSON `d` (device 0)
  target/release/akictl --socket "$1" status --json | "$PY" -c "import json,sys; s=json.load(sys.stdin); d=s['devices'][0]; print($2)"
}
accuracy() { # socket -> min cosine vs the references
  "$PY" -I - "$1" "$refs" <<'PY'
import json, sys
import numpy as np
from akidb_client import Client
rows = [json.loads(l) for l in open(sys.argv[2])]
worst = 1.0
with Client(sys.argv[1]) as c:
    for i in range(0, len(rows), 32):
        chunk = rows[i:i + 32]
        got = np.asarray(c.embed([r["text"] for r in chunk]), dtype=np.float64)
        ref = np.asarray([r["embedding"] for r in chunk], dtype=np.float64)
        cos = np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        worst = min(worst, float(cos.min()))
print(f"{worst:.6f}")
PY
}
throughput() { # socket -> inputs/s
  target/release/akictl --socket "$1" bench --concurrency 16 --batch 8 --duration 8 --texts "$work/texts.txt" --json \
    | "$PY" -c 'import json,sys; print(round(json.load(sys.stdin)["inputs_per_s"], 1))'
}
cache_state() { find "$work/trt-cache" -type f -printf '%P %s %T@\n' 2>/dev/null | sort; }
ok_if() { if eval "$1"; then echo ok; else echo FAIL; fi; }

declare -A rate=()
if [ "$have_trt" = 1 ]; then
  say "TensorRT library: $trt_lib"
  config trt tensorrt "$model"
  if start trt; then
    cold=$ready_s
    ep=$(field "$work/trt.sock" 'd["ep"]'); precision=$(field "$work/trt.sock" 'd.get("precision")')
    row "provider in use is TensorRT" "$ep" "$(ok_if '[ "$ep" = tensorrt ]')"
    row "precision fp16 (default)" "$precision" "$(ok_if '[ "$precision" = fp16 ]')"
    row "cold engine build, exec to READY" "${cold} s" ok
    acc=$(accuracy "$work/trt.sock")
    row "accuracy vs references, min cosine >= 0.999" "$acc ($(basename "$model"))" "$(ok_if "(( \$(echo \"$acc >= 0.999\" | bc) ))")"
    sensors=$(field "$work/trt.sock" '(d.get("sensors") or {}).get("source","-"), (d.get("sensors") or {}).get("temperature_c"), (d.get("sensors") or {}).get("power_w")')
    row "NVML readings in status (source, °C, W)" "$sensors" "$(ok_if '[[ "$sensors" == *nvml* ]] && [[ "$sensors" != *None* ]]')"
    rate[tensorrt]=$(throughput "$work/trt.sock")
    stop
    before=$(cache_state)
    row "engine cache written" "$(echo "$before" | grep -c . ) files" "$(ok_if '[ -n "$before" ]')"
    if start trt; then
      after=$(cache_state)
      row "READY from the warm cache <= 5 s" "${ready_s} s" "$(ok_if "(( \$(echo \"$ready_s <= 5\" | bc) ))")"
      row "no rebuild (cache files unchanged)" "$(echo "$after" | grep -c .) files" "$(ok_if '[ "$before" = "$after" ]')"
      stop
    else row "READY from the warm cache" "did not start" FAIL; fi
    # New weights beside an unchanged graph: the decoder fixture keeps its weights in an external data file.
    cp -r tests/data/qwen3-tiny "$work/q"
    config dec tensorrt "$work/q" 'file = "model_external.onnx"'
    keys() { find "$work/trt-cache" -mindepth 1 -maxdepth 1 -type d | sort; }
    if start dec; then stop; fi
    k1=$(keys)
    "$PY" -c 'import sys; p=sys.argv[1]; b=bytearray(open(p,"rb").read()); b[len(b)//2]^=1; open(p,"wb").write(b)' "$work/q/model_external.onnx_data"
    if start dec; then stop; fi
    k2=$(keys)
    row "changed weights force a new engine" "$(echo "$k1" | grep -c .) -> $(echo "$k2" | grep -c .) cache keys" \
      "$(ok_if '[ "$(echo "$k2" | grep -c .)" -gt "$(echo "$k1" | grep -c .)" ]')"
  else
    row "TensorRT device starts" "exited (see above)" FAIL
  fi
fi

config cuda cuda "$model"
if start cuda; then
  ep=$(field "$work/cuda.sock" 'd["ep"]')
  row "provider in use is CUDA" "$ep" "$(ok_if '[ "$ep" = cuda ]')"
  acc=$(accuracy "$work/cuda.sock")
  row "CUDA accuracy, min cosine >= 0.999" "$acc" "$(ok_if "(( \$(echo \"$acc >= 0.999\" | bc) ))")"
  if [ "$have_trt" = 0 ]; then
    sensors=$(field "$work/cuda.sock" '(d.get("sensors") or {}).get("source","-"), (d.get("sensors") or {}).get("temperature_c")')
    row "NVML readings in status (source, °C)" "$sensors" "$(ok_if '[[ "$sensors" == *nvml* ]] && [[ "$sensors" != *None* ]]')"
  fi
  rate[cuda]=$(throughput "$work/cuda.sock")
  stop
else
  row "CUDA device starts" "exited (see above)" FAIL
fi
config cpu cpu "$model"
if start cpu; then rate[cpu]=$(throughput "$work/cpu.sock"); stop; fi

echo
echo "=== gpu-check summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)) ==="
printf '%-44s %-26s %s\n' CHECK VALUE RESULT
printf '%s\n' "${rows[@]}"
echo "throughput, inputs/s (16 clients x 8 texts): tensorrt ${rate[tensorrt]:--}  cuda ${rate[cuda]:--}  cpu ${rate[cpu]:--}"
if [ -n "${rate[cpu]:-}" ] && [ -n "${rate[cuda]:-}" ]; then
  echo "ratios: cuda/cpu $(echo "scale=2; ${rate[cuda]} / ${rate[cpu]}" | bc)${rate[tensorrt]:+  tensorrt/cuda $(echo "scale=2; ${rate[tensorrt]} / ${rate[cuda]}" | bc)}"
fi
if [ "$fail" = 1 ]; then say "FAILED"; exit 1; fi
if [ "$have_trt" = 0 ]; then say "CUDA checks passed; TensorRT libraries (libnvinfer) were not found, so TensorRT was NOT checked"; exit 3; fi
say "all checks passed"
exit 0
