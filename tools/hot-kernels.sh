#!/usr/bin/env bash
# Which CPU instructions ONNX Runtime's kernels ran while akidbd served a model file: ONNX Runtime picks its GEMM
# kernels by CPU feature (AMX tiles, AVX-512 VNNI, AVX-512, AVX2), its profiler names operators, not kernels, and
# the library is stripped. So this samples the running daemon with perf, takes the sampled instructions inside
# libonnxruntime, and sorts the samples by the instruction set of the code around each one.
#
#   tools/hot-kernels.sh MODEL_DIR FILE [SECONDS] [TEXT]
#
# Starts target/release/akidbd on MODEL_DIR/FILE, sends one TEXT at a time (default a short command, cache off) for
# SECONDS (default 15) while `perf record` samples it, and prints the share of samples in each class:
#   amx-int8 (tdpbusd/tdpbssd/...), avx512-vnni (vpdpbusd/vpdpwssd on zmm), avx-vnni (the same on ymm/xmm),
#   avx512-fp32 (vfmadd on zmm), avx2-fp32 (vfmadd on ymm), other.
# Needs perf and objdump (Debian: linux-perf, binutils) and `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 MODEL_DIR FILE [SECONDS] [TEXT]" >&2; exit 2; }
model_dir=$(realpath "$1"); file=$2; secs=${3:-15}; text=${4:-pick up the red cup}
lib=$PWD/target/onnxruntime/libonnxruntime.so.1.32.0
for tool in perf objdump; do command -v $tool >/dev/null || { echo "hot-kernels: $tool is needed" >&2; exit 1; }; done
[ -x target/release/akidbd ] && [ -f "$lib" ] || { echo "hot-kernels: run make build first" >&2; exit 1; }

work=$(mktemp -d)
daemon=
trap '[ -n "$daemon" ] && kill $daemon 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/akidb.toml" <<EOF
[server]
socket = "$work/embed.sock"
[model]
dir = "$model_dir"
file = "$file"
[ort]
library_path = "$lib"
EOF
target/release/akidbd --config "$work/akidb.toml" 2> "$work/akidbd.log" &
daemon=$!
for _ in $(seq 600); do
  target/release/akictl --socket "$work/embed.sock" health >/dev/null 2>&1 && break
  kill -0 $daemon 2>/dev/null || { cat "$work/akidbd.log" >&2; exit 1; }
  sleep 0.1
done
printf '%s\n' "$text" > "$work/text.txt"
target/release/akictl --socket "$work/embed.sock" bench --texts "$work/text.txt" --concurrency 1 \
  --duration "$((secs + 5))" --requests 1000000 > /dev/null 2>&1 &
bench=$!
sleep 2
perf record -q -F 1999 -p $daemon -o "$work/perf.data" -- sleep "$secs" 2> /dev/null
kill $bench 2>/dev/null || true
perf report -q -i "$work/perf.data" --stdio --sort dso,sym 2> /dev/null > "$work/report.txt"
objdump -d --no-show-raw-insn "$lib" > "$work/ort.dis"
python3 - "$work/report.txt" "$work/ort.dis" "$file" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" <<'PY'
import bisect, re, sys
report, dis, file, cpu = sys.argv[1:5]
samples = {}  # dso-relative address in libonnxruntime -> share of all samples (%)
total_ort = other_dso = 0.0
for line in open(report):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)", line)
    if not m:
        continue
    share, dso, sym = float(m.group(1)), m.group(2), m.group(3)
    if "libonnxruntime" in dso and sym.startswith("0x"):
        samples[int(sym, 16)] = samples.get(int(sym, 16), 0.0) + share
        total_ort += share
    else:
        other_dso += share
addrs, insns = [], []
for line in open(dis):
    m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(.*)", line)
    if m:
        addrs.append(int(m.group(1), 16))
        insns.append((m.group(2), m.group(3)))
def classify(mnemonic, operands):
    if mnemonic.startswith(("tdpb", "tileload", "tilestore")):
        return "amx-int8" if mnemonic.startswith("tdpb") else None
    if mnemonic.startswith(("vpdpbusd", "vpdpwssd", "vpdpbssd")):
        return "avx512-vnni" if "zmm" in operands else "avx-vnni"
    if mnemonic.startswith("vfmadd") or mnemonic.startswith("vfmaddps"):
        return "avx512-fp32" if "zmm" in operands else "avx2-fp32" if "ymm" in operands else None
    return None
classes = {}
for addr, share in samples.items():
    i = bisect.bisect_left(addrs, addr)
    found = [classify(*insns[j]) for j in range(max(0, i - 24), min(len(insns), i + 24))]
    found = [c for c in found if c]
    # The richest instruction set in the sampled instruction's neighbourhood (a GEMM kernel's inner loop).
    order = ["amx-int8", "avx512-vnni", "avx-vnni", "avx512-fp32", "avx2-fp32"]
    cls = next((c for c in order if c in found), "other")
    classes[cls] = classes.get(cls, 0.0) + share
print(f"hot-kernels: {file} on {cpu}: {total_ort:.1f}% of samples in libonnxruntime, {other_dso:.1f}% elsewhere")
for cls, share in sorted(classes.items(), key=lambda kv: -kv[1]):
    print(f"  {cls:12s} {share:5.1f}% of all samples")
PY
