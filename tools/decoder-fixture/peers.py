"""akidbd next to in-process Python onnxruntime and sentence-transformers on a large decoder (issue #12's benchmark).

    /work/venv-torch/bin/python tools/decoder-fixture/peers.py MODEL_DIR [--out target/peers.json] [--skip st]

MODEL_DIR is a sentence-transformers directory with model.onnx (e.g. `make.py --full-size --out /work/q06`). The
Python environment needs onnxruntime, tokenizers, numpy and, for the sentence-transformers column, torch and
sentence-transformers (a random-weight PyTorch copy of the model's config is written once to MODEL_DIR-st: the
weights differ from the export's, which does not matter for speed or memory). Each system runs in its own process,
one after the other, on the same texts; each reports its start-up (exec to ready, for akidbd READY over the
socket), three loads and its peak RSS (VmHWM):

- one at a time: 16 short sentences, one per request (in-process: one per run);
- 8 clients short: 8 clients x 8 short sentences, one per request (in-process: the 64 sentences in runs of 8);
- 2 clients x 8 long: 2 clients x 2 requests of 8 passages of ~180 tokens (in-process: the 32 passages in runs
  of 8, and in runs of 1; the better counts).

akidbd runs with its default settings (cache off for the loads, since they repeat no text anyway).
"""
import argparse, json, os, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

SUBJECTS = ["The robot", "A forklift", "The drone", "Our rover", "The arm", "A camera", "The planner", "A lidar"]
VERBS = ["scans the shelf", "avoids a person", "charges its battery", "maps the corridor", "grasps a red box",
         "reports a fault", "waits at the door", "follows the line"]
PASSAGE = ("The mobile manipulator scans the warehouse shelves, plans a path around people and forklifts, grasps "
           "boxes of unknown weight and reports each step to the fleet manager. ")


def short_texts(n):
    return [f"{SUBJECTS[i % 8]} {VERBS[(i // 8) % 8]} near station {i}." for i in range(n)]


def long_texts(n):
    return [PASSAGE * 5 + f" Passage {i}." for i in range(n)]


def peak_rss_mb(pid="self"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(fn, count):
    started = time.monotonic()
    fn()
    return round(count / (time.monotonic() - started), 3)


def in_process(embed, ready_s):
    """The three loads for an in-process embedder `embed(texts) -> vectors`."""
    short, longs = short_texts(80), long_texts(32)
    embed(short[:2])  # first run of a shape outside the timing, as akidbd's warm-up does
    one = timed(lambda: [embed([t]) for t in short[64:80]], 16)
    eight = timed(lambda: [embed(short[i:i + 8]) for i in range(0, 64, 8)], 64)
    long8 = timed(lambda: [embed(longs[i:i + 8]) for i in range(0, 32, 8)], 32)
    long1 = timed(lambda: [embed([t]) for t in longs[:8]], 8)
    return {"ready_s": round(ready_s, 2), "one_at_a_time": one, "short_8_clients": eight,
            "long_2x8": max(long8, long1), "long_runs_of_8": long8, "long_runs_of_1": long1,
            "peak_rss_mb": round(peak_rss_mb())}


def max_tokens(model_dir):
    """The truncation length akidbd applies: the directory's max_seq_length (sentence-transformers 2-5 or 6 layout),
    capped at 8192 as akidbd caps it."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.load(open(os.path.join(model_dir, name))).get(key)
        except OSError:
            continue
        if value:
            return min(int(value), 8192)
    return 8192


def ort_embedder(model_dir, profile_prefix=None, file="model.onnx"):
    """The model in this process with onnxruntime's defaults: embed(texts) -> unit vectors (left padding,
    last-token pooling, as akidbd serves a decoder); embed.session is the session. With profile_prefix, ORT's
    profiler records every run (op_profile.py). `file`: the graph inside model_dir (a quantized one, say)."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    session = ort.InferenceSession(os.path.join(model_dir, file), options,
                                   providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(max_tokens(model_dir))  # as akidbd and sentence-transformers truncate
    names = {i.name for i in session.get_inputs()}

    def embed(texts):
        enc = tok.encode_batch(texts)
        seq = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), seq), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(enc):  # left padding: the last token of every row is its last real token
            ids[row, seq - len(e.ids):] = e.ids
            mask[row, seq - len(e.ids):] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in names:
            feed["position_ids"] = np.tile(np.arange(seq, dtype=np.int64), (len(enc), 1))
        hidden = session.run(None, feed)[0][:, -1, :]
        return hidden / np.linalg.norm(hidden, axis=1, keepdims=True)

    embed.session = session
    return embed


def run_ort(model_dir):
    started = time.monotonic()
    embed = ort_embedder(model_dir)
    ready = time.monotonic() - started
    return in_process(embed, ready)


def st_dir(model_dir):
    """A sentence-transformers directory of the model's config with random PyTorch weights (written once)."""
    out = model_dir.rstrip("/") + "-st"
    if os.path.exists(os.path.join(out, "modules.json")):
        return out
    import shutil
    from transformers import AutoConfig, AutoModel
    config = AutoConfig.from_pretrained(model_dir)
    AutoModel.from_config(config).save_pretrained(out)
    for name in os.listdir(model_dir):
        src = os.path.join(model_dir, name)
        if name.startswith("model.onnx"):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(out, name), dirs_exist_ok=True)
        elif name != "config.json":
            shutil.copy(src, out)
    return out


def run_st(model_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(os.cpu_count())
    path = st_dir(model_dir)
    started = time.monotonic()
    model = SentenceTransformer(path, device="cpu")
    ready = time.monotonic() - started

    def embed(texts):
        with torch.inference_mode():
            return model.encode(texts, batch_size=len(texts), normalize_embeddings=True)

    return in_process(embed, ready)


def start_akidbd(model_dir, sock, log_path, config=None, before_ready=None):
    """Starts target/release/akidbd on MODEL_DIR and returns its process once `health` says ready (runs
    before_ready() first, while it starts); fails with the log's path if it exits first."""
    sys.path.insert(0, os.path.join(REPO, "tools", "python"))
    from akidb_client import Client
    args = [os.path.join(REPO, "target/release/akidbd"), "--model", model_dir, "--socket", sock]
    proc = subprocess.Popen(args + (["--config", config] if config else []), stderr=open(log_path, "w"))
    try:
        if before_ready:
            before_ready()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"akidbd exited with {proc.returncode}; see {log_path}")
            try:
                if Client(sock, timeout=5).health() == "ready":
                    return proc
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.05)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise


def run_akidbd(model_dir, config=None):
    sys.path.insert(0, os.path.join(REPO, "tools", "python"))
    from akidb_client import Client
    sock = f"/tmp/akidb-peers-{os.getpid()}.sock"
    started = time.monotonic()
    proc = start_akidbd(model_dir, sock, "/tmp/akidb-peers.log", config)
    try:
        ready = time.monotonic() - started
        short, longs = short_texts(80), long_texts(32)
        first = Client(sock, timeout=900)
        first.embed(short[:2], cache=False)

        def clients(n, work):
            threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        def one():
            for text in short[64:80]:
                first.embed([text], cache=False)

        def eight(k):
            c = Client(sock, timeout=900)
            for text in short[k * 8:(k + 1) * 8]:
                c.embed([text], cache=False)

        def long(k):
            c = Client(sock, timeout=900)
            for r in range(2):
                base = (k * 2 + r) * 8
                c.embed(longs[base:base + 8], cache=False)

        result = {"ready_s": round(ready, 2), "one_at_a_time": timed(one, 16),
                  "short_8_clients": timed(lambda: clients(8, eight), 64),
                  "long_2x8": timed(lambda: clients(2, long), 32)}
        status = Client(sock).status()
        result["restarts"] = [d["restarts"] for d in status["devices"]]
        result["errors"] = status["counters"]["errors"]
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid))
        return result
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--out", default=os.path.join(REPO, "target", "peers.json"))
    parser.add_argument("--skip", action="append", default=[], choices=["akidbd", "ort", "st"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the systems in turn this many times (this machine drifts between runs)")
    parser.add_argument("--akidbd-config", help="a config file for akidbd (default: none, all defaults)")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = os.path.abspath(args.model_dir)
    if args.only:
        if args.only == "akidbd":
            print(json.dumps(run_akidbd(model_dir, args.akidbd_config)))
        else:
            print(json.dumps({"ort": run_ort, "st": run_st}[args.only](model_dir)))
        return
    results = {"model": model_dir, "machine": os.uname().nodename, "cpus": os.cpu_count(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for round_ in range(args.rounds):
        for name in ("akidbd", "ort", "st"):
            if name in args.skip:
                continue
            extra = ["--akidbd-config", os.path.abspath(args.akidbd_config)] if args.akidbd_config else []
            out = subprocess.run([sys.executable, __file__, model_dir, "--only", name] + extra, capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            key = name if args.rounds == 1 else f"{name}_round{round_ + 1}"
            results[key] = json.loads(out.stdout.strip().splitlines()[-1])
            print(key, results[key], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
