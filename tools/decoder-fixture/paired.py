"""akidbd against in-process Python onnxruntime, request by request, strictly alternating (issue #12's comparison
at the level of one request, where this machine's drift of +-10-20% between runs cancels).

    /work/venv-torch/bin/python tools/decoder-fixture/paired.py MODEL_DIR [--rounds 20] [--out FILE]

Loads the model twice, in akidbd (default settings, cache bypassed) and in this process (onnxruntime's defaults,
left padding and last-token pooling as peers.py does), then for each round and each shape sends one request to
each side, in alternating order, with a pause between them so that neither side's spinning threads overlap the
other's run. Shapes: one short sentence; 8 short sentences in one request (one batch of 8 on both sides); one
passage of ~180 tokens. Prints, per shape, both medians and the median of the per-pair ratios.

    ... paired.py MODEL_DIR --loads [--rounds 8] [--out FILE]

alternates whole loads instead, back to back as issue #12's benchmark runs them, with `akictl bench` (a Rust client,
so that a Python client's own CPU time on these 2 cores is not charged to akidbd) as akidbd's client: one at a time
(16 short sentences, one per request; in-process one per run), 8 clients short (8 connections x 8 requests of one
sentence; in-process the 64 sentences in runs of 8), 2 clients x 8 long (2 connections x 1 request of 8 passages;
in-process the 16 passages in runs of 8). Each side's figure is texts per second; the ratio is akidbd over
in-process, per round, and its median. Meant for the large decoders: on a model whose requests take a
millisecond or two, akictl's connections and start are a real share of a 16-request load.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "python"))

import peers  # noqa: E402
from akidb_client import Client  # noqa: E402

PAUSE_S = 0.15


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--loads", action="store_true", help="alternate whole loads (akictl bench as the client)")
    args = parser.parse_args()
    sock = f"/tmp/akidb-paired-{os.getpid()}.sock"
    loaded = {}
    proc = peers.start_akidbd(args.model_dir, sock, "/tmp/akidb-paired.log",
                              before_ready=lambda: loaded.setdefault("embed", peers.ort_embedder(args.model_dir)))
    try:
        run = paired_loads if args.loads else paired_requests
        report = run(sock, loaded["embed"], args)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    finally:
        proc.terminate()
        proc.wait()


def alternate(rounds, cases, sides):
    """Measures every case on every side: once outside the figures (round 199), then each round, the side that goes
    first alternating, after a pause. cases: name -> case; sides: side -> measure(round, case) -> figure. Returns
    name -> side -> the figures of the rounds."""
    for case in cases.values():
        for measure in sides.values():
            measure(199, case)
    figures = {name: {side: [] for side in sides} for name in cases}
    for r in range(rounds):
        for name, case in cases.items():
            order = list(sides.items())
            if r % 2:
                order.reverse()
            for side, measure in order:
                time.sleep(PAUSE_S)
                figures[name][side].append(measure(r, case))
    return figures


def paired_requests(sock, embed, args):
    """One request per shape and side, timed; the ratio is onnxruntime's time over akidbd's (akidbd's speed)."""
    client = Client(sock, timeout=900)
    short, longs = peers.short_texts(200), peers.long_texts(40)
    shapes = {
        "one_short": lambda r: [short[r % 200]],
        "eight_short": lambda r: short[(r * 8) % 192:(r * 8) % 192 + 8],
        "one_long": lambda r: [longs[r % 40]],
    }

    def timed(run):
        def measure(r, pick):
            texts = pick(r)
            started = time.perf_counter()
            run(texts)
            return time.perf_counter() - started
        return measure

    sides = {"akidbd": timed(lambda texts: client.embed(texts, cache=False)), "onnxruntime": timed(embed)}
    times = alternate(args.rounds, shapes, sides)
    report = {"model_dir": args.model_dir, "rounds": args.rounds, "shapes": {}}
    for shape, t in times.items():
        ratios = [o / a for a, o in zip(t["akidbd"], t["onnxruntime"])]
        figures = {
            "akidbd_median_ms": round(statistics.median(t["akidbd"]) * 1000, 1),
            "onnxruntime_median_ms": round(statistics.median(t["onnxruntime"]) * 1000, 1),
            "akidbd_speed_over_onnxruntime_median_pair": round(statistics.median(ratios), 4),
            "pairs_akidbd_faster": sum(x > 1 for x in ratios),
        }
        report["shapes"][shape] = figures
        print(f"{shape}: akidbd {figures['akidbd_median_ms']} ms, onnxruntime {figures['onnxruntime_median_ms']} ms"
              f" (medians); akidbd speed / onnxruntime, median of pairs: "
              f"{figures['akidbd_speed_over_onnxruntime_median_pair']:.3f}, akidbd faster in "
              f"{figures['pairs_akidbd_faster']}/{args.rounds} pairs", flush=True)
    return report


# The three loads: (name, akictl connections, inputs per request, requests, in-process run size, texts).
LOADS = [("one_at_a_time", 1, 1, 16, 1, "short"), ("short_8_clients", 8, 1, 64, 8, "short"),
         ("long_2x8", 2, 8, 2, 8, "long")]


def paired_loads(sock, embed, args):
    """Whole loads, strictly alternating which side goes first; texts per second per side, per round."""
    akictl = os.path.join(REPO, "target", "release", "akictl")
    pools = {"short": peers.short_texts(200), "long": peers.long_texts(40)}
    workdir = tempfile.TemporaryDirectory(prefix="akidb-paired-")

    def texts(r, kind, n):
        pool = pools[kind]
        return [pool[(r * n + i) % len(pool)] for i in range(n)]

    def run_akidbd(r, load):
        name, conns, batch, requests, _, kind = load
        path = os.path.join(workdir.name, f"{name}-{r}.txt")
        with open(path, "w") as f:
            f.write("\n".join(texts(r, kind, batch * requests)) + "\n")
        out = subprocess.run([akictl, "bench", "--socket", sock, "--concurrency", str(conns), "--batch", str(batch),
                              "--requests", str(requests), "--duration", "3600", "--texts", path, "--json"],
                             capture_output=True, text=True, check=True).stdout
        report = json.loads(out)
        if report["ok"] != requests:
            raise SystemExit(f"akictl bench: {report['ok']} of {requests} requests answered: {out}")
        return report["inputs_per_s"]

    def run_ort(r, load):
        _, _, batch, requests, size, kind = load
        chunk = texts(r, kind, batch * requests)
        started = time.perf_counter()
        for i in range(0, len(chunk), size):
            embed(chunk[i:i + size])
        return len(chunk) / (time.perf_counter() - started)

    with workdir:
        rates = alternate(args.rounds, {load[0]: load for load in LOADS},
                          {"akidbd": run_akidbd, "onnxruntime": run_ort})
    report = {"model_dir": args.model_dir, "rounds": args.rounds, "mode": "loads", "loads": {}}
    for name, d in rates.items():
        ratios = [a / o for a, o in zip(d["akidbd"], d["onnxruntime"])]
        figures = {
            "akidbd_median_per_s": round(statistics.median(d["akidbd"]), 3),
            "onnxruntime_median_per_s": round(statistics.median(d["onnxruntime"]), 3),
            "akidbd_over_onnxruntime_median": round(statistics.median(ratios), 4),
            "ratios": [round(x, 4) for x in ratios],
        }
        report["loads"][name] = figures
        print(f"{name}: akidbd {figures['akidbd_median_per_s']}/s, onnxruntime {figures['onnxruntime_median_per_s']}/s"
              f" (medians); akidbd / onnxruntime, median of rounds {figures['akidbd_over_onnxruntime_median']:.3f}"
              f" (min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    return report


if __name__ == "__main__":
    main()
