#!/usr/bin/env python3
"""Merges what `make bench` measured into one artifact, target/bench.json, and prints the figures the README quotes.

Inputs (each written by one bench; a missing one is reported, not invented): target/bench-engine.json
(`cargo bench --bench engine`), target/bench-daemon.json (`--bench daemon`), target/bench-latency.json
(`--bench latency`), target/bench-models.json (`--bench models`). The artifact also records the machine (CPU
model, cores) and the time, so that a figure can be traced to its run.
"""
import datetime
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PARTS = ["engine", "daemon", "latency", "models"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    report = {
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
    }
    missing = []
    for part in PARTS:
        path = os.path.join(ROOT, "target", f"bench-{part}.json")
        try:
            with open(path) as f:
                report[part] = json.load(f)
        except (OSError, ValueError):
            missing.append(part)
    out = os.path.join(ROOT, "target", "bench.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(f"bench: wrote {out} ({', '.join(p for p in PARTS if p in report)})")
    if missing:
        print(f"bench: missing {', '.join(missing)}: run their benches", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
