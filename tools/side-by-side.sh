#!/usr/bin/env bash
# akidbd next to HF text-embeddings-inference, side by side: ../shared/peers/side_by_side.py with akidbd's
# embedding cache off (the load repeats its texts: with the cache akidbd would answer from memory, which measures
# the cache, not the model). Everything else is akidbd's defaults.
#
#   tools/side-by-side.sh --tei-bin PATH [--only akidbd-default,tei] [--seconds 15] [--out FILE]
#   tools/side-by-side.sh --rounds N --tei-bin PATH [--seconds 15] [--out FILE]
#
# One run measures each system once, akidbd first. This machine's speed drifts within minutes (one run here gave
# long texts 1.26x, the next 1.75x), so `--rounds N` runs akidbd's default model and TEI N times each, one server
# at a time, alternating which goes first, and writes every round plus the median over rounds of each ratio
# (akidbd / TEI per load, RSS peak, exec -> ready) to --out (default target/side-by-side-rounds.json).
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
PY="${PYTHON:-python3}"
COMMON=(--project . --fixture ../shared/fixtures/minilm/public.jsonl --fp32 ../shared/models/all-MiniLM-L6-v2-fp32
  --ort-lib target/onnxruntime/libonnxruntime.so.1.32.0)

rounds=0 out="" rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
if [ "$rounds" -eq 0 ]; then
  exec "$PY" target/side_by_side.py "${COMMON[@]}" ${out:+--out "$out"} "${rest[@]}"
fi

dir=target/side-by-side
rm -rf "$dir" && mkdir -p "$dir"
for i in $(seq 1 "$rounds"); do
  order=(akidbd-default tei)
  [ $((i % 2)) -eq 0 ] && order=(tei akidbd-default)
  for key in "${order[@]}"; do
    echo "== round $i/$rounds: $key"
    "$PY" target/side_by_side.py "${COMMON[@]}" "${rest[@]}" --only "$key" --out "$dir/round-$i-$key.json"
  done
done
"$PY" - "$dir" "$rounds" "${out:-target/side-by-side-rounds.json}" <<'PYEOF'
import json, statistics, sys
d, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rounds, ratios = [], {}
for i in range(1, n + 1):
    a = json.load(open(f"{d}/round-{i}-akidbd-default.json"))["akidbd default model"]
    t = next(iter(json.load(open(f"{d}/round-{i}-tei.json")).values()))
    rounds.append({"akidbd default model": a, "TEI": t, "akidbd_first": i % 2 == 1})
    for load, v in a.items():
        if isinstance(v, dict) and load in t:
            ratios.setdefault(load + " (akidbd/TEI)", []).append(v["sent_per_s"] / t[load]["sent_per_s"])
    ratios.setdefault("rss_peak (akidbd/TEI)", []).append(a["rss_peak_mb"] / t["rss_peak_mb"])
    ratios.setdefault("ready_s (akidbd/TEI)", []).append(a["ready_s"] / t["ready_s"])
summary = {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3),
               "each": [round(x, 3) for x in v]} for k, v in ratios.items()}
json.dump({"rounds": rounds, "ratios": summary}, open(out, "w"), indent=1)
print(f"over {n} rounds (median, min-max of akidbd/TEI):")
for k, v in summary.items():
    print(f"  {k:36s} {v['median']:6.3f}  ({v['min']:.3f}-{v['max']:.3f})")
print(f"-> {out}")
PYEOF
