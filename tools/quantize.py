#!/usr/bin/env python3
"""Block-wise weight quantization of a model directory's ONNX graph, and the truth about what it costs.

    tools/quantize.py MODEL_DIR --bits 4|8 [--block 32] [--accuracy-level 4] [--exclude REGEX ...]
                      [--asymmetric] [--file model.onnx] [--out NAME.onnx]
    tools/quantize.py MODEL_DIR --dynamic [--per-channel] [--exclude REGEX ...]

Writes MODEL_DIR/model_q{bits}_b{block}.onnx (or --out): every MatMul with a constant weight becomes
onnxruntime's com.microsoft MatMulNBits (RTN: round to nearest, a scale per block of `--block` weights along K,
symmetric unless --asymmetric; `--accuracy-level 4` lets onnxruntime's CPU kernels quantize activations per row
and block at run time and use integer dot products, so a vector never depends on its batch). MatMuls whose node
name matches an --exclude regex stay fp32: keep there the layers the report shows hurt.

--dynamic writes MODEL_DIR/model_dynamic_int8.onnx instead: onnxruntime's dynamic quantization (int8 weights, per
tensor or --per-channel; activations quantized at run time with one scale per tensor, MatMulInteger). Its integer
GEMM is the one onnxruntime runs on AMX and VNNI, so on such CPUs it can be several times faster than the
block-wise files; but the activation scale covers the whole batch, so a text's vector depends on what it is
batched with. The report measures that (batch_dependence) for every file.

Then it writes MODEL_DIR/<out>.report.json and prints it:
  - cosine of the quantized model's vectors to the original file's (min, mean; per kind of text and the worst
    texts) on the held-out texts below, which ship with the tool: short robot commands of 1-7 tokens, passages of
    50-250 tokens, and queries (behind the model's "query" prompt when it has one);
  - batch dependence: the short texts' vectors embedded alone against the same texts in one padded batch with
    passages (min cosine; 1.0 for the block-wise files, below it for --dynamic);
  - size on disk of both files;
  - engine speed on this machine: in-process onnxruntime, one text at a time, both files, interleaved.
For a cross-encoder (a reranker directory) the report compares the logits of (query, passage) pairs instead.

Needs onnx, onnxruntime, tokenizers and numpy (`make setup` puts them in target/pyenv).
"""

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType
from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
from onnxruntime.quantization.quant_utils import QuantFormat
from tokenizers import Tokenizer

SHORT = [
    "stop", "go", "halt now", "turn left", "turn right", "open the gripper", "close the gripper", "lift the box",
    "put it down", "come here", "follow me", "wait", "charge", "go home", "pick up the red cup", "where am i",
    "battery level", "slow down", "speed up", "look up", "look down", "scan the room", "find the door",
    "emergency stop", "cancel", "repeat that", "yes", "no", "ok", "thanks", "hello robot", "start mapping",
    "save the map", "dock", "undock", "grab it", "release", "rotate 90 degrees", "move forward 2 m", "back up",
]
PASSAGES = [
    "The mobile base carries a 7-axis arm with a parallel gripper. Before each shift the operator checks the "
    "emergency stop, the battery charge and the wheel encoders, and runs the self-test from the tablet.",
    "When the lidar reports an obstacle closer than half a metre, the planner stops the base, raises the arm to "
    "its safe pose and asks the perception node for a new occupancy grid before it plans around the obstacle.",
    "Charging: drive onto the dock until the contacts click, then wait for the green light. A full charge takes "
    "about ninety minutes; the robot refuses tasks below fifteen percent and returns to the dock on its own.",
    "In the warehouse the shelves are numbered from the loading bay. Heavy boxes go on the bottom two shelves; "
    "fragile items are marked with a red label and must be lifted with the soft gripper pads, never the hooks.",
    "Calibration of the wrist camera: place the checkerboard on the table, run the calibration script, and move "
    "the arm through the twelve poses it shows. The reprojection error should stay below a third of a pixel.",
    "Yesterday the kitchen robot put the red cup in the dishwasher, the blue cup on the top shelf and the spoons "
    "in the second drawer. The operator asked it to leave the kettle on the counter next to the sink.",
    "Firmware 4.2 changes how the motor controllers report faults: an over-current fault now latches until the "
    "controller is reset from the maintenance menu, and the log records the joint, the current and the time.",
    "The hospital delivery route starts at the pharmacy, visits wards three, five and seven, and ends at the "
    "service lift. Doors open on their own when the robot's badge is in range; the lift is called over the API.",
    "def plan_path(grid, start, goal):\n    open_set = [start]\n    came_from = {}\n    while open_set:\n"
    "        current = min(open_set, key=cost)\n        if current == goal:\n            return rebuild(came_from)",
    "Der Roboter bringt die Tasse in die Küche und stellt sie neben die Spüle. Danach fährt er zur Ladestation.",
    "ロボットは赤いカップを台所のテーブルに置きました。次に充電ステーションに戻ります。",
    "GPU temperature 87 C, power 41 W, clocks throttled to 918 MHz; the perception node dropped to 11 frames per "
    "second and the planner widened its safety margins until the temperature fell below 80 C again.",
]
QUERIES = [
    "where did I leave the red cup?", "how long does a full charge take", "which shelf holds heavy boxes",
    "what changed in firmware 4.2", "how do I calibrate the wrist camera", "what happens when the lidar sees an obstacle",
    "where does the hospital route end", "why did the frame rate drop",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--bits", type=int, choices=[4, 8], help="block-wise MatMulNBits weights (4 or 8 bits)")
    parser.add_argument("--dynamic", action="store_true",
                        help="onnxruntime's dynamic int8 (MatMulInteger, per-tensor activations) instead of --bits")
    parser.add_argument("--per-channel", action="store_true", help="with --dynamic: a weight scale per channel")
    parser.add_argument("--block", type=int, default=32, help="weights per scale along K (16-256, a power of 2)")
    parser.add_argument("--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                        help="MatMulNBits accuracy_level: 4 = int8 compute (default), 1 = fp32, 0 = unset")
    parser.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                        help="keep MatMul nodes whose name matches in fp32 (repeatable)")
    parser.add_argument("--asymmetric", action="store_true", help="with zero points (default: symmetric)")
    parser.add_argument("--qdq", action="store_true",
                        help="write the weights as block-wise DequantizeLinear + MatMul (QDQ) instead of MatMulNBits "
                             "(4 bits only)")
    parser.add_argument("--gather", action="store_true",
                        help="also the embedding table (Gather -> GatherBlockQuantized): a smaller file and less "
                             "memory; speed barely changes (only the rows of the input's tokens are read)")
    parser.add_argument("--file", default=None, help="the source graph inside MODEL_DIR (default model.onnx)")
    parser.add_argument("--out", default=None, help="the quantized file's name inside MODEL_DIR")
    parser.add_argument("--no-report", action="store_true", help="only write the quantized file")
    parser.add_argument("--references", metavar="JSONL",
                        help="also the min cosine to reference vectors (lines with text and embedding, e.g. "
                             "sentence-transformers' of the source model), one text at a time")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds per load (default 3)")
    args = parser.parse_args()
    if args.dynamic == (args.bits is not None):
        parser.error("give --bits 4|8 (block-wise) or --dynamic, one of them")
    if args.dynamic and (args.qdq or args.gather or args.asymmetric):
        parser.error("--dynamic takes no --qdq, --gather or --asymmetric (those are block-wise options)")
    if args.per_channel and not args.dynamic:
        parser.error("--per-channel goes with --dynamic")
    if args.dynamic:
        args.bits, args.block, args.accuracy_level = 8, None, None
    return args


def matmuls_and_excluded(model, patterns):
    """The graph's MatMul node names, and those an --exclude pattern keeps in fp32."""
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    return matmuls, [name for name in matmuls if any(re.search(p, name) for p in patterns)]


def quantize_dynamic(source, target, args):
    matmuls, excluded = matmuls_and_excluded(onnx.load(str(source), load_external_data=False), args.exclude)
    big = file_bytes(source) > 1_800_000_000
    ort_quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=args.per_channel,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded, use_external_data_format=big,
                         # graphs with onnxruntime's fused (com.microsoft) ops defeat shape inference: fp32 it is
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    out = onnx.load(str(target), load_external_data=False)
    quantized = sum(1 for n in out.graph.node if n.op_type == "MatMulInteger")
    return {"matmuls": len(matmuls), "quantized": quantized, "excluded": excluded, "gathers_quantized": 0}


def quantize(source, target, args):
    if args.dynamic:
        return quantize_dynamic(source, target, args)
    model = onnx.load(str(source))
    matmuls, excluded = matmuls_and_excluded(model, args.exclude)
    config = DefaultWeightOnlyQuantConfig(block_size=args.block, is_symmetric=not args.asymmetric,
                                          accuracy_level=args.accuracy_level,
                                          quant_format=QuantFormat.QDQ if args.qdq else QuantFormat.QOperator,
                                          bits=args.bits,
                                          op_types_to_quantize=("MatMul", "Gather") if args.gather else None)
    quantizer = MatMulNBitsQuantizer(model, bits=args.bits, block_size=args.block, is_symmetric=not args.asymmetric,
                                     accuracy_level=args.accuracy_level, nodes_to_exclude=excluded,
                                     algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    big = sum(t.ByteSize() for t in out.graph.initializer) > 1_800_000_000
    onnx.save_model(out, str(target), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=target.name + "_data" if big else None)
    quantized = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits") + sum(
        1 for n in out.graph.node if n.op_type == "DequantizeLinear")
    gathers = sum(1 for n in out.graph.node if n.op_type == "GatherBlockQuantized")
    return {"matmuls": len(matmuls), "quantized": quantized, "excluded": excluded, "gathers_quantized": gathers}


def file_bytes(path):
    """The graph and its external data files (`model.onnx_data`, `model.onnx.data`, ...: named after it)."""
    path = Path(path)
    data = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p.name != path.name
            and not p.name.endswith(".json")]
    return path.stat().st_size + sum(p.stat().st_size for p in data)


class Model:
    """Just enough of a sentence-transformers directory to embed one text at a time, the same way for both files."""

    def __init__(self, directory):
        self.dir = Path(directory)
        read = lambda name: json.loads((self.dir / name).read_text()) if (self.dir / name).exists() else {}
        config = read("config.json")
        self.reranker = any(a.endswith("ForSequenceClassification") for a in config.get("architectures", []))
        st = read("sentence_bert_config.json")
        limit = st.get("max_seq_length") or read("tokenizer_config.json").get("model_max_length") or 512
        self.max_tokens = int(min(limit, config.get("max_position_embeddings", limit), 8192))
        self.tokenizer = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        pooling = read("1_Pooling/config.json")
        mode = pooling.get("pooling_mode") or next(
            (k[len("pooling_mode_"):] for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True), "mean")
        self.pooling = {"mean_tokens": "mean", "cls_token": "cls", "lasttoken": "last", "last_token": "last"}.get(mode, mode)
        self.prompts = read("config_sentence_transformers.json").get("prompts") or {}

    def texts(self):
        """(kind, text or (query, passage)) pairs of the held-out set."""
        if self.reranker:
            return [("pair", (q, p)) for q in QUERIES for p in PASSAGES[:6]] + [("short pair", (s, PASSAGES[0])) for s in SHORT[:20]]
        query = self.prompts.get("query", "")
        return [("short", t) for t in SHORT] + [("passage", t) for t in PASSAGES] + [("query", query + t) for t in QUERIES]

    def run(self, session, text):
        encoding = self.tokenizer.encode(*text) if isinstance(text, tuple) else self.tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        names = {i.name for i in session.get_inputs()}
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
                 "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :]}
        outputs = {o.name for o in session.get_outputs()}
        name = next(n for n in ["logits", "sentence_embedding", "last_hidden_state", "token_embeddings"] if n in outputs)
        value = session.run([name], {k: v for k, v in feeds.items() if k in names})[0].astype(np.float64)
        if value.ndim == 3:
            value = {"mean": value[0].mean(0), "cls": value[0][0], "last": value[0][-1]}[self.pooling]
        return value.reshape(-1), len(encoding.ids)


def batch_feeds(session, model, texts):
    """One right-padded batch of plain texts, as an encoder is served: (the session's feeds, the encodings)."""
    encodings = [model.tokenizer.encode(t) for t in texts]
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
             "position_ids": np.tile(np.arange(width, dtype=np.int64), (len(texts), 1))}
    return {k: v for k, v in feeds.items() if k in names}, encodings


def batch_run(session, model, texts):
    """One padded batch of plain texts run once; returns seconds."""
    feeds, _ = batch_feeds(session, model, texts)
    started = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - started


def batch_vectors(session, model, texts):
    """Pooled vectors of one right-padded batch of plain texts, the way the daemon pools a batch."""
    feeds, encodings = batch_feeds(session, model, texts)
    outputs = {o.name for o in session.get_outputs()}
    name = next(n for n in ["sentence_embedding", "last_hidden_state", "token_embeddings"] if n in outputs)
    value = session.run([name], feeds)[0].astype(np.float64)
    if value.ndim == 2:
        return list(value)
    vectors = []
    for row, e in enumerate(encodings):
        n = len(e.ids)
        vectors.append({"mean": value[row, :n].mean(0), "cls": value[row, 0], "last": value[row, n - 1]}[model.pooling])
    return vectors


def batch_dependence(model, session):
    """Min cosine of the short texts' vectors alone to the same texts batched with passages (padded to the longest)."""
    texts = SHORT[:16]
    batched = batch_vectors(session, model, texts + PASSAGES[:4])[:len(texts)]
    scores = []
    for text, b in zip(texts, batched):
        a, _ = model.run(session, text)
        scores.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {"texts": len(scores), "batched_with": "4 passages", "min": min(scores), "mean": float(np.mean(scores))}


def loads_speed(model, sessions, rounds):
    """Texts per second of both files on three loads, the files alternating load by load, round by round:
    short (one short command at a time), mixed (batches of 32 short and long texts), long (batches of 8 passages)."""
    mixed = (SHORT + PASSAGES + QUERIES)[:32]
    loads = {"short_b1": [[t] for t in SHORT], "mixed_b32": [mixed], "long_b8": [PASSAGES[:8]]}
    totals = {name: [0.0, 0.0] for name in loads}
    counts = {name: sum(len(b) for b in batches) * rounds for name, batches in loads.items()}
    for _ in range(rounds):
        for name, batches in loads.items():
            for i, session in enumerate(sessions):
                totals[name][i] += sum(batch_run(session, model, batch) for batch in batches)
    return {name: {"source_per_s": counts[name] / t[0], "quantized_per_s": counts[name] / t[1], "speedup": t[0] / t[1]}
            for name, t in totals.items()}


def reference_cosines(model, session, path):
    """Min and mean cosine of the quantized file's vectors to reference vectors, one text at a time."""
    scores = []
    for line in open(path):
        case = json.loads(line)
        vector, _ = model.run(session, case["text"])
        want = np.asarray(case["embedding"], dtype=np.float64)
        scores.append(float(vector @ want / (np.linalg.norm(vector) * np.linalg.norm(want))))
    return {"file": str(path), "texts": len(scores), "min": min(scores), "mean": float(np.mean(scores))}


def report(model, source, target, summary, args):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for f in (source, target)]
    texts = model.texts()
    for session in sessions:  # warm-up
        model.run(session, texts[0][1])
    times = [0.0, 0.0]
    rows = []
    for kind, text in texts:
        vectors = []
        for i, session in enumerate(sessions):
            started = time.perf_counter()
            vector, tokens = model.run(session, text)
            times[i] += time.perf_counter() - started
            vectors.append(vector)
        a, b = vectors
        if model.reranker:
            score = 1.0 - abs(float(a[0] - b[0]))  # a logit, not a vector: 1 - |difference|
        else:
            score = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        rows.append((kind, text if isinstance(text, str) else " | ".join(text), tokens, score))
    by_kind = {}
    for kind in dict.fromkeys(r[0] for r in rows):
        scores = [r[3] for r in rows if r[0] == kind]
        tokens = [r[2] for r in rows if r[0] == kind]
        by_kind[kind] = {"texts": len(scores), "tokens": [min(tokens), max(tokens)], "min": min(scores), "mean": float(np.mean(scores))}
    worst = sorted(rows, key=lambda r: r[3])[:5]
    metric = "1 - |logit difference|" if model.reranker else "cosine"
    extra = {}
    if not model.reranker:
        extra["batch_dependence"] = {"source": batch_dependence(model, sessions[0]),
                                     "quantized": batch_dependence(model, sessions[1])}
        extra["loads"] = loads_speed(model, sessions, args.rounds)
        if args.references:
            extra["to_references"] = reference_cosines(model, sessions[1], args.references)
    return {
        "model_dir": str(model.dir),
        "source": source.name,
        "quantized": target.name,
        "scheme": "dynamic int8 (MatMulInteger, per-tensor activations)" if args.dynamic else "block-wise (MatMulNBits)",
        "per_channel": bool(args.per_channel) if args.dynamic else None,
        "bits": args.bits,
        "block": args.block,
        "accuracy_level": args.accuracy_level,
        "symmetric": not args.asymmetric,
        "matmuls": summary["matmuls"],
        "matmuls_quantized": summary["quantized"],
        "gathers_quantized": summary["gathers_quantized"],
        "excluded": summary["excluded"],
        "size_bytes": {"source": file_bytes(source), "quantized": file_bytes(target)},
        "metric": metric,
        "min": min(r[3] for r in rows),
        "mean": float(np.mean([r[3] for r in rows])),
        "by_kind": by_kind,
        "worst": [{"kind": k, "tokens": n, "score": s, "text": t[:80]} for k, t, n, s in worst],
        "speed": {
            "what": "in-process onnxruntime, one text at a time, both files interleaved, this machine",
            "source_ms_per_text": times[0] * 1e3 / len(rows),
            "quantized_ms_per_text": times[1] * 1e3 / len(rows),
            "speedup": times[0] / times[1],
        },
        **extra,
    }


def main():
    args = parse_args()
    logging.disable(logging.WARNING)  # the quantizers log every node they skip or cannot type
    if args.qdq and args.bits != 4:
        sys.exit("quantize: --qdq writes 4-bit blocks only (onnxruntime 1.32's quantizer leaves 8-bit QDQ unquantized)")
    directory = Path(args.model_dir)
    source = directory / (args.file or "model.onnx")
    if not source.exists():
        sys.exit(f"quantize: {source} is missing")
    default = (f"model_dynamic_int8{'_pc' if args.per_channel else ''}.onnx" if args.dynamic
               else f"model_q{args.bits}_b{args.block}.onnx")
    target = directory / (args.out or default)
    summary = quantize(source, target, args)
    scheme = "dynamic int8" if args.dynamic else f"int{args.bits} block {args.block}"
    print(f"quantize: {summary['quantized']} of {summary['matmuls']} MatMuls -> {scheme}: {target}")
    if args.no_report:
        return
    result = report(Model(directory), source, target, summary, args)
    report_path = target.with_name(target.name + ".report.json")
    report_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
