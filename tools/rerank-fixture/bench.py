#!/usr/bin/env python3
"""Rerank benchmark: akidbd serving a MiniLM-L6-sized cross-encoder beside the default embedding model, against
in-process Python onnxruntime on the same pairs, in one run.

  python3 tools/rerank-fixture/make.py --minilm GT_MODEL_DIR --out RERANKER   # the reranker (random head)
  python3 tools/rerank-fixture/bench.py RERANKER [--out docs/bench/rerank-DATE.json]

Needs onnxruntime, tokenizers and msgpack in the Python that runs it, and `cargo build --release --bins`.
Measured, for a short query (~8 tokens) and ~60-token documents, 20 and 50 candidates per request, cache off:
  - in-process onnxruntime: one padded batch of the pairs (tokenization included), median of the runs;
  - akidbd alone: one rerank request at a time over the socket, median, and pairs/s;
  - akidbd while akictl bench keeps a bulk embedding load of 4 clients x 16 long texts on the other model:
    realtime rerank requests, median and p99.
The two sides alternate run by run, so that the machine's drift falls on both.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tools", "python"))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from akidb_client import Client  # noqa: E402

WORDS = ("robot arm camera lidar shelf cup kitchen table battery dock hallway gripper map floor operator door "
         "charging cabinet sensor wheel motor box pallet camera wiring calibration red blue green left right").split()


def document(rng, n_words=45):
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def in_process(model_dir, query, docs, session, tokenizer):
    start = time.perf_counter()
    encodings = tokenizer.encode_batch([(query, d) for d in docs])
    width = max(len(e.ids) for e in encodings)
    feed = {name: np.zeros((len(docs), width), dtype=np.int64) for name in ["input_ids", "attention_mask", "token_type_ids"]}
    for row, e in enumerate(encodings):
        n = len(e.ids)
        feed["input_ids"][row, :n] = e.ids
        feed["attention_mask"][row, :n] = 1
        feed["token_type_ids"][row, :n] = e.type_ids
    session.run(["logits"], feed)
    return time.perf_counter() - start


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reranker")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(REPO, "target", "bench-rerank.json"))
    args = parser.parse_args()
    rng = random.Random(7)
    query = "where did the robot leave the red cup"
    docs = [document(rng) for _ in range(50)]

    tokenizer = Tokenizer.from_file(os.path.join(args.reranker, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(512)
    session = onnxruntime.InferenceSession(os.path.join(args.reranker, "model.onnx"), providers=["CPUExecutionProvider"])
    tokens = [len(e.ids) for e in tokenizer.encode_batch([(query, d) for d in docs])]

    work = tempfile.mkdtemp()
    socket = os.path.join(work, "embed.sock")
    config = os.path.join(work, "akidb.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nsocket = "{socket}"\n[ort]\nlibrary_path = "{REPO}/target/onnxruntime/libonnxruntime.so.1.32.0"\n'
                f'[[models]]\nname = "minilm"\ndir = "{REPO}/models/all-MiniLM-L6-v2"\n'
                f'[[models]]\nname = "reranker"\ndir = "{os.path.abspath(args.reranker)}"\n')
    daemon = subprocess.Popen([os.path.join(REPO, "target/release/akidbd"), "--config", config],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
    try:
        deadline = time.time() + 120
        while True:
            try:
                with Client(socket) as c:
                    if c.health() == "ready":
                        break
            except OSError:
                pass
            if time.time() > deadline or daemon.poll() is not None:
                sys.exit("akidbd did not become ready: " + open(os.path.join(work, "log")).read())
            time.sleep(0.1)
        client = Client(socket)
        figures = {}
        for n in (20, 50):
            ours, theirs = [], []
            for run in range(args.runs + 2):
                started = time.perf_counter()
                client.rerank(query, docs[:n], cache=False)
                t_ours = time.perf_counter() - started
                t_theirs = in_process(args.reranker, query, docs[:n], session, tokenizer)
                if run >= 2:  # the first runs of a new shape are warm-up
                    ours.append(t_ours)
                    theirs.append(t_theirs)
            figures[f"alone_{n}"] = {
                "akidbd_p50_ms": statistics.median(ours) * 1e3,
                "onnxruntime_p50_ms": statistics.median(theirs) * 1e3,
                "akidbd_pairs_per_s": n / statistics.median(ours),
                "onnxruntime_pairs_per_s": n / statistics.median(theirs),
            }
        # A bulk embedding load on the other model, then realtime reranks beside it.
        long_file = os.path.join(work, "long.txt")
        with open(long_file, "w") as f:
            for i in range(512):
                f.write(f"{i} " + " ".join(rng.choice(WORDS) for _ in range(150)) + "\n")
        load = subprocess.Popen([os.path.join(REPO, "target/release/akictl"), "--socket", socket, "bench", "--model",
                                 "minilm", "--mix", "bulk", "--concurrency", "4", "--batch", "16", "--duration", "600",
                                 "--texts", long_file, "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(2.0)
        for n in (20, 50):
            latencies = []
            for run in range(args.runs):
                started = time.perf_counter()
                client.rerank(query, docs[:n], cache=False, priority="realtime")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
            figures[f"under_bulk_{n}"] = {
                "akidbd_realtime_p50_ms": statistics.median(latencies) * 1e3,
                "akidbd_realtime_p99_ms": percentile(latencies, 0.99) * 1e3,
            }
        status = client.status()
        load.kill()
        load.wait()
        queued = status["models"][0]["queues"]["bulk"]
    finally:
        daemon.terminate()
        daemon.wait(30)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), platform.processor())
    report = {
        "what": "rerank: akidbd (socket, one request at a time) vs in-process onnxruntime, MiniLM-L6-sized random cross-encoder",
        "cpu": model_name,
        "query_tokens": len(tokenizer.encode(query).ids),
        "pair_tokens_mean": sum(tokens) / len(tokens),
        "runs": args.runs,
        "minilm_bulk_inputs_queued_at_the_end": queued,
        **figures,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
