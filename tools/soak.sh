#!/usr/bin/env bash
# Soak: mixed traffic with client churn against the release daemon for SOAK_SECS (default 600), sampling the
# daemon's RSS and open file descriptors. Fails if a reply is lost (bench errors out on a missing or duplicate
# reply), if RSS grows more than 5% over its value after the warm-up minute (or 20% of it in runs under 5 min), or
# if open descriptors grow. `make soak` runs 10 minutes; CI runs SOAK_SECS=60.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SOAK_SECS:-600}
DAEMON_CONFIG='[batcher.queue_capacity]\nrealtime = 512\nnormal = 512\nbulk = 512\n'
# shellcheck source=tools/release-daemon.sh
. tools/release-daemon.sh
on_exit 'kill "${load_pids[@]:-}" 2>/dev/null || true'
sample() { echo "$(rss) $(fds)"; }
load_pids=()
ctl bench --concurrency 8 --depth 4 --duration "$SECS" --mix "realtime=1,normal=6,bulk=3" --words 3-60 --churn 50 --json > "$work/mixed.json" & load_pids+=($!)
ctl bench --concurrency 2 --batch 16 --duration "$SECS" --mix bulk --words 40-180 --churn 20 --deadline-ms 2000 --json > "$work/bulk.json" & load_pids+=($!)
warm=$(( SECS < 120 ? SECS / 4 : 60 ))
sleep "$warm"
read -r rss0 fd0 < <(sample)
echo "after ${warm}s: RSS ${rss0} KiB, ${fd0} fds"
max_rss=$rss0; max_fd=$fd0
elapsed=$warm
while [ "$elapsed" -lt "$SECS" ]; do
  sleep 10; elapsed=$((elapsed + 10))
  read -r rss fd < <(sample)
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
  [ "$fd" -gt "$max_fd" ] && max_fd=$fd
done
for p in "${load_pids[@]}"; do wait "$p"; done
read -r rss1 fd1 < <(sample)
python3 - "$work/mixed.json" "$work/bulk.json" "$rss0" "$max_rss" "$rss1" "$fd0" "$max_fd" "$fd1" "$SECS" <<'PY'
import json, sys
mixed, bulk = (json.load(open(p)) for p in sys.argv[1:3])
rss0, max_rss, rss1, fd0, max_fd, fd1, secs = map(int, sys.argv[3:10])
for name, r in (("mixed", mixed), ("bulk", bulk)):
    print(f"{name}: {r['requests']} requests, {r['ok']} ok, errors {r['errors']}, {r['inputs_per_s']:.1f} inputs/s")
    for cls, p in r["latency_ms"].items():
        print(f"  {cls}: p50 {p['p50']:.1f} ms p99 {p['p99']:.1f} ms max {p['max']:.1f} ms")
growth = (max_rss - rss0) / rss0
print(f"RSS {rss0} -> max {max_rss} -> end {rss1} KiB (growth {growth:.1%}); fds {fd0} -> max {max_fd} -> end {fd1}")
limit = 0.05 if secs >= 300 else 0.20
ok = growth <= limit and fd1 <= fd0 + 4
print("soak:", "1 passed, 0 failed" if ok else "0 passed, 1 failed")
sys.exit(0 if ok else 1)
PY
