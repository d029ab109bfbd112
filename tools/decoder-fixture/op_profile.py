"""Where one run of the model spends its time in onnxruntime, per operator type (ORT's own profiler).

    /work/venv-torch/bin/python tools/decoder-fixture/op_profile.py MODEL_DIR [--file model.onnx] [--batch 1] [--long] [--runs 6]

Runs the model in this process with onnxruntime's defaults (as peers.ort_embedder feeds it) on short sentences (or
~180-token passages with --long), `--runs` times after one untimed run, and prints the mean run time, the sum of
its kernels and the ten dearest operator types. On the 0.6B decoder one short sentence is almost all MatMul: each
run streams every weight once, so a single input is bound by memory bandwidth, and batching buys throughput until
the matrices are wide enough to be bound by arithmetic instead.
"""
import argparse
import collections
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--long", action="store_true", help="passages of ~180 tokens instead of short sentences")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--file", default="model.onnx", help="the graph inside MODEL_DIR (e.g. model_q8_b32.onnx)")
    args = parser.parse_args()
    prefix = os.path.join("/tmp", f"akidb-profile-{os.getpid()}")
    embed = peers.ort_embedder(args.model_dir, profile_prefix=prefix, file=args.file)
    pool = peers.long_texts(40) if args.long else peers.short_texts(200)
    embed(pool[:args.batch])  # the shape's first run
    for r in range(1, args.runs + 1):
        embed([pool[(r * args.batch + i) % len(pool)] for i in range(args.batch)])
    profile = embed.session.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    os.remove(profile)
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][1:]
    by_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    n = len(runs) + 1  # the kernels of the untimed run are in the profile too
    print(f"batch {args.batch} {'long' if args.long else 'short'}: run {sum(runs) / len(runs) / 1000:.1f} ms (mean of "
          f"{len(runs)}), kernels {sum(by_op.values()) / n / 1000:.1f} ms in {sum(count.values()) // n} nodes")
    for op, micros in by_op.most_common(10):
        print(f"  {op:28} {micros / n / 1000:8.1f} ms  {100 * micros / sum(by_op.values()):5.1f}%  ({count[op] // n} nodes)")


if __name__ == "__main__":
    main()
