#!/usr/bin/env bash
# Overload: measures the daemon's capacity (closed loop, 32 clients x 4 pipelined requests of 1 short sentence), then offers
# OVERLOAD_FACTOR (default 5) times that load open loop for OVERLOAD_SECS (default 60) with a 500 ms deadline, and
# reports goodput (ok replies/s) as a fraction of capacity, every reply code, and the daemon's RSS. Fails if a
# reply is lost or duplicated (the bench then hangs past its timeout or errors out), if goodput is under
# OVERLOAD_MIN_GOODPUT (default 0.90) of capacity, or if RSS grows more than 25%. `make overload` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${OVERLOAD_SECS:-60}
FACTOR=${OVERLOAD_FACTOR:-5}
MIN_GOODPUT=${OVERLOAD_MIN_GOODPUT:-0.90}
# shellcheck source=tools/release-daemon.sh
. tools/release-daemon.sh
ctl bench --concurrency 32 --duration 5 --json > /dev/null
capacity() { ctl bench --concurrency 32 --depth 4 --duration 15 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_per_s"])'; }
ctl status --json > "$work/status_c0.json"
capacity=$(capacity)
rate=$(python3 -c "print(round($capacity * $FACTOR, 1))")
rss0=$(rss)
ctl status --json > "$work/status0.json"
batches() {
  python3 - "$@" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
d = {k: b["counters"].get(k, 0) - a["counters"].get(k, 0) for k in ("batches", "inputs", "late_inputs")}
print(f"{sys.argv[3]}: {d['inputs']} inputs computed in {d['batches']} batches "
      f"({d['inputs'] / max(d['batches'], 1):.1f} per batch), {d['late_inputs']} of them too late to deliver")
PY
}
batches "$work/status_c0.json" "$work/status0.json" "capacity run"
echo "capacity ${capacity} req/s; offering ${rate} req/s (${FACTOR}x) for ${SECS}s, deadline 500 ms; RSS ${rss0} KiB"
timeout $((SECS + 60)) target/release/akictl --socket "$sock" bench --concurrency 16 --depth 100000 --rate "$rate" \
  --duration "$SECS" --deadline-ms 500 --json > "$work/overload.json" &
load=$!
max_rss=$rss0
echo "RSS samples (KiB):"
while kill -0 "$load" 2>/dev/null; do
  sleep 2
  r=$(rss); [ "$r" -gt "$max_rss" ] && max_rss=$r; printf "%s " "$r"
done
wait "$load"; echo; echo "RSS after: $(rss) KiB"
ctl status --json > "$work/status1.json"
batches "$work/status0.json" "$work/status1.json" "overload"
# The machine's speed drifts: capacity is the mean of a measurement before and one after the overload.
capacity_after=$(capacity)
python3 - "$work/overload.json" "$capacity" "$capacity_after" "$rss0" "$max_rss" "$MIN_GOODPUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
before, after = float(sys.argv[2]), float(sys.argv[3])
rss0, max_rss, min_goodput = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
capacity = (before + after) / 2
print(f"capacity {before:.0f} req/s before, {after:.0f} after, mean {capacity:.0f}")
answered = r["ok"] + sum(r["errors"].values())
goodput = r["requests_per_s"] / capacity
print(f"offered {r['offered_per_s']:.0f} req/s = {r['offered_per_s'] / capacity:.2f}x capacity over {r['elapsed_s']:.1f} s "
      f"({r['held_back']} sends held back)")
print(f"{r['requests']} requests, {answered} answered once: {r['ok']} ok, errors {r['errors']}")
for cls, p in r["latency_ms"].items():
    print(f"  ok {cls}: p50 {p['p50']:.1f} ms p99 {p['p99']:.1f} ms max {p['max']:.1f} ms")
print(f"goodput {r['requests_per_s']:.0f} req/s = {goodput:.2f} of capacity {capacity:.0f}/s; RSS {rss0} -> max {max_rss} KiB")
ok = answered == r["requests"] and goodput >= min_goodput and max_rss <= rss0 * 1.25
print("overload:", "1 passed, 0 failed" if ok else "0 passed, 1 failed")
sys.exit(0 if ok else 1)
PY
