"""akidbd against in-process Python onnxruntime, request by request, strictly alternating (issue #12's comparison
at the level of one request, where this machine's drift of +-10-20% between runs cancels).

    /work/venv-torch/bin/python tools/decoder-fixture/paired.py MODEL_DIR [--rounds 20] [--out FILE]

Loads the model twice, in akidbd (default settings, cache bypassed) and in this process (onnxruntime's defaults,
left padding and last-token pooling as peers.py does), then for each round and each shape sends one request to
each side, in alternating order, with a pause between them so that neither side's spinning threads overlap the
other's run. Shapes: one short sentence; 8 short sentences in one request (one batch of 8 on both sides); one
passage of ~180 tokens. Prints, per shape, both medians and the median of the per-pair ratios.
"""
import argparse
import json
import os
import statistics
import sys
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
    args = parser.parse_args()
    sock = f"/tmp/akidb-paired-{os.getpid()}.sock"
    loaded = {}
    proc = peers.start_akidbd(args.model_dir, sock, "/tmp/akidb-paired.log",
                              before_ready=lambda: loaded.setdefault("embed", peers.ort_embedder(args.model_dir)))
    try:
        embed = loaded["embed"]
        client = Client(sock, timeout=900)
        short, longs = peers.short_texts(200), peers.long_texts(40)
        shapes = {
            "one_short": lambda r: [short[r % 200]],
            "eight_short": lambda r: short[(r * 8) % 192:(r * 8) % 192 + 8],
            "one_long": lambda r: [longs[r % 40]],
        }
        sides = {"akidbd": lambda texts: client.embed(texts, cache=False), "onnxruntime": embed}
        for pick in shapes.values():  # each shape's first run outside the timing, on both sides
            for run in sides.values():
                run(pick(199))
        times = {shape: {side: [] for side in sides} for shape in shapes}
        for r in range(args.rounds):
            for shape, pick in shapes.items():
                order = list(sides.items())
                if r % 2:
                    order.reverse()
                for side, run in order:
                    texts = pick(r)
                    time.sleep(PAUSE_S)
                    started = time.perf_counter()
                    run(texts)
                    times[shape][side].append(time.perf_counter() - started)
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
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
