#!/usr/bin/env python3
"""akidbd serving several files of one model directory (fp32 and its quantized versions), measured in one run,
the files taking turns request by request, so that this machine's drift falls on each alike.

    target/pyenv/bin/python tools/quantized-paired.py MODEL_DIR model.onnx model_q8_b32.onnx model_q4_b32.onnx \\
        [--rounds 20] [--out FILE]

The first file is the reference. Each file gets its own akidbd (target/release/akidbd, `model.file`, default
settings, cache off in every request); they start one after the other (READY: from exec to `health` ready) and
then all stay up. Measured per file:
  - one short query at a time (with the query prompt) and one robot command at a time (1-7 tokens, no prompt):
    p50 and p95 over `rounds` x 5 requests each, the files alternating request by request;
  - 8 clients x 8 short texts and 2 clients x 8 passages, each a whole `akictl bench` load (a Rust client),
    the files alternating load by load: texts per second, median over the rounds;
  - peak RSS (VmHWM) of each daemon at the end;
  - min and mean cosine of its vectors to the first file's, on tools/quantize.py's held-out texts.
Prompts: the model's `query` prompt, where it has one, for the queries.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools", "python"))
sys.path.insert(0, os.path.join(REPO, "tools"))

import numpy as np  # noqa: E402

from akidb_client import Client  # noqa: E402
from quantize import PASSAGES, QUERIES, SHORT  # noqa: E402


def start(model_dir, file, work):
    name = os.path.splitext(file)[0]
    sock = os.path.join(work, f"{name}.sock")
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nsocket = "{sock}"\n[model]\ndir = "{os.path.abspath(model_dir)}"\nfile = "{file}"\n'
                f'[ort]\nlibrary_path = "{REPO}/target/onnxruntime/libonnxruntime.so.1.32.0"\n')
    started = time.monotonic()
    proc = subprocess.Popen([os.path.join(REPO, "target/release/akidbd"), "--config", config],
                            stderr=open(os.path.join(work, f"{name}.log"), "w"))
    while True:
        if proc.poll() is not None:
            sys.exit(f"akidbd on {file} exited; see {work}/{name}.log")
        try:
            if Client(sock, timeout=5).health() == "ready":
                break
        except OSError:
            pass
        time.sleep(0.05)
    return {"file": file, "proc": proc, "sock": sock, "ready_s": time.monotonic() - started}


def bench(sock, args, texts_file):
    out = subprocess.run([os.path.join(REPO, "target/release/akictl"), "--socket", sock, "bench", "--json",
                          "--texts", texts_file, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["inputs_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    work = tempfile.mkdtemp()
    daemons = [start(args.model_dir, f, work) for f in args.files]
    try:
        clients = [Client(d["sock"], timeout=600) for d in daemons]
        prompt = "query" if "query" in (clients[0].info().get("prompts") or {}) else None
        # Accuracy: every held-out text through every daemon.
        vectors = [np.asarray(c.embed(SHORT + PASSAGES, cache=False), dtype=np.float64) for c in clients]
        qvectors = [np.asarray(c.embed(QUERIES, cache=False, prompt_name=prompt), dtype=np.float64) for c in clients]
        for d, v, q in zip(daemons, vectors, qvectors):
            cos = np.concatenate([(v * vectors[0]).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(vectors[0], axis=1)),
                                  (q * qvectors[0]).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(qvectors[0], axis=1))])
            d["cosine_to_first"] = {"min": float(cos.min()), "mean": float(cos.mean()), "texts": int(cos.size)}
        # One short query at a time (with the query prompt, ~30 tokens for a Qwen3 model), then one robot command
        # at a time (1-7 tokens, no prompt), the files alternating request by request.
        for key, texts, prompt_name in (("one_short", QUERIES, prompt), ("one_command", SHORT, None)):
            latencies = [[] for _ in daemons]
            for r in range(args.rounds):
                for k in range(5):
                    for i, c in enumerate(clients):
                        started = time.perf_counter()
                        c.embed([f"{texts[(r * 5 + k) % len(texts)]} {r}"], cache=False, prompt_name=prompt_name)
                        latencies[i].append(time.perf_counter() - started)
                        time.sleep(0.05)
            for d, lat in zip(daemons, latencies):
                lat.sort()
                d[f"{key}_p50_ms"] = lat[len(lat) // 2] * 1e3
                d[f"{key}_p95_ms"] = lat[int(len(lat) * 0.95)] * 1e3
        # Whole loads, alternating.
        short_file, long_file = os.path.join(work, "short.txt"), os.path.join(work, "long.txt")
        with open(short_file, "w") as f:
            f.write("\n".join(SHORT) + "\n")
        with open(long_file, "w") as f:
            f.write("\n".join(p.replace("\n", " ") for p in PASSAGES) + "\n")
        loads = {"8_clients_short": (["--concurrency", "8", "--requests", "64", "--duration", "600"], short_file),
                 "2_clients_x8_passages": (["--concurrency", "2", "--batch", "8", "--requests", "4", "--duration", "600"], long_file)}
        rates = {name: [[] for _ in daemons] for name in loads}
        for _ in range(max(3, args.rounds // 4)):
            for name, (bench_args, texts) in loads.items():
                for i, d in enumerate(daemons):
                    rates[name][i].append(bench(d["sock"], bench_args, texts))
        for name in loads:
            for d, r in zip(daemons, rates[name]):
                d[f"{name}_per_s"] = statistics.median(r)
        for d in daemons:
            with open(f"/proc/{d['proc'].pid}/status") as f:
                d["peak_rss_mb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
            # The graph and its external data files (named after it: model.onnx_data, model.onnx.data, ...).
            d["size_mb"] = sum(os.path.getsize(os.path.join(args.model_dir, x)) / 1e6 for x in os.listdir(args.model_dir)
                               if x.startswith(d["file"]) and not x.endswith(".json"))
    finally:
        for d in daemons:
            d["proc"].terminate()
            d["proc"].wait(30)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((l.split(":", 1)[1].split() for l in cpu.splitlines() if l.startswith("Flags")), [])
    report = {
        "model_dir": os.path.abspath(args.model_dir),
        "cpu": next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), ""),
        "cpu_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))],
        "onnxruntime": "1.32.0",
        "rounds": args.rounds,
        "files": [{k: v for k, v in d.items() if k not in ("proc", "sock")} for d in daemons],
    }
    first = report["files"][0]
    for f in report["files"]:
        f["one_short_speedup_p50"] = first["one_short_p50_ms"] / f["one_short_p50_ms"]
        f["one_command_speedup_p50"] = first["one_command_p50_ms"] / f["one_command_p50_ms"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
