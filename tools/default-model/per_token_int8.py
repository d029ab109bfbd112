"""Per-token int8 option for the default model: integer MatMuls whose activations are quantized per row.

    per_token_int8.py SRC_MODEL_DIR OUT_MODEL_ONNX [--alpha 0.5] [--calibration 150]

Every MatMul with a constant 2-D weight becomes
    x' = x * (1/s)                           s: per input channel, SmoothQuant-style (below), folded into W
    x_q = QuantizeLinear(x', scale_r, zp_r)  uint8, one scale and zero point per row (token), opset-21 blocked
    y = s_r * (MatMulIntegerToFloat(x_q, W_q, 1, w_scale) - zp_r * colsum(W_q) * w_scale)
with W_q symmetric int8 per output column. Per row, unlike onnxruntime's dynamic quantization (one activation
scale per tensor, i.e. per batch): an input's vector does not depend on the other inputs of its batch or on the
padding (measured: per-tensor, per-channel weights, min cosine 0.9985 alone but 0.9915 in batches of 32).

Smoothing: s_j = a_j^alpha / w_j^(1 - alpha), a_j the largest |x_j| over calibration texts, w_j the largest
|W_j.|; it moves activation outliers (a few channels of LayerNorm and GELU outputs) into the weights, exactly in
fp32. Calibration texts are docstrings of Python standard-library modules (the Python running this script), not
the fixture texts the option is judged on.

The multiply-add is a com.microsoft MatMulIntegerToFloat written out here (one op instead of MatMulInteger, Cast
and Mul). Left to onnxruntime, a graph of MatMulInteger -> Cast -> Mul by a per-row scale [B, S, 1] gave wrong
vectors at the extended optimization level (min cosine 0.39; right at the basic level): its fusion into that op
does not keep a per-row scale. Here the per-row scale is applied after the zero-point correction.
"""
import argparse
import importlib
import inspect
import random
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STDLIB = ["os", "re", "json", "collections", "itertools", "functools", "pathlib", "subprocess", "threading",
          "asyncio", "socket", "http.client", "email", "argparse", "logging", "datetime", "decimal", "fractions",
          "statistics", "random", "string", "textwrap", "csv", "sqlite3", "zipfile", "tarfile", "shutil",
          "tempfile", "unittest", "typing", "dataclasses", "enum", "heapq", "bisect", "math", "hashlib", "hmac",
          "secrets", "uuid", "urllib.parse"]


def stdlib_texts(seed=1):
    """Docstrings of standard-library modules and their public functions and classes, whitespace folded."""
    texts = []
    for name in STDLIB:
        module = importlib.import_module(name)
        if module.__doc__:
            texts.append(" ".join(module.__doc__.split())[:1500])
        for member, obj in inspect.getmembers(module):
            if member.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(" ".join(doc.split())[:1500])
    random.Random(seed).shuffle(texts)
    return list(dict.fromkeys(texts))


def feeds(session, ids):
    ids = np.array([ids], dtype=np.int64)
    known = {i.name for i in session.get_inputs()}
    all_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in all_feeds.items() if k in known}


def weight_matmuls(graph):
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            yield node, inits[node.input[1]]


def calibrate(model, tokenizer, texts):
    """Largest |x| per channel of every weight MatMul's input, each text run alone."""
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = sorted({node.input[0] for node, _ in weight_matmuls(probe.graph)})
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    largest = {}
    for text in texts:
        outs = session.run(inputs, feeds(session, tokenizer.encode(text).ids))
        for name, value in zip(inputs, outs):
            row_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            largest[name] = np.maximum(largest.get(name, 0), row_max)
    return largest


def rewrite(model, largest, alpha):
    graph = model.graph
    consts = []

    def const(name, value):
        consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    const("pt_axes", np.array([-1], dtype=np.int64))
    const("pt_zero", np.array(0.0, dtype=np.float32))
    const("pt_one", np.array(1.0, dtype=np.float32))
    const("pt_eps", np.array(1e-8, dtype=np.float32))
    const("pt_255", np.array(255.0, dtype=np.float32))
    replaced = {}
    for k, (node, init) in enumerate(weight_matmuls(graph)):
        x = node.input[0]
        w = numpy_helper.to_array(init).astype(np.float32)
        act = np.maximum(largest[x], 1e-5)
        smooth = act ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
        smooth /= np.exp(np.log(smooth).mean())
        w = w * smooth[:, None]
        w_scale = np.abs(w).max(axis=0) / 127.0
        w_scale[w_scale == 0] = 1.0
        w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        col = (w_q.astype(np.int32).sum(axis=0) * w_scale).astype(np.float32)
        p = f"pt{k}_"
        const(p + "inv", (1.0 / smooth).astype(np.float32))
        const(p + "w", w_q)
        const(p + "ws", w_scale.astype(np.float32))
        const(p + "col", col)
        make = helper.make_node
        replaced[node.output[0]] = [
            make("Mul", [x, p + "inv"], [p + "x"]),
            make("ReduceMax", [p + "x", "pt_axes"], [p + "hi0"], keepdims=1),
            make("ReduceMin", [p + "x", "pt_axes"], [p + "lo0"], keepdims=1),
            make("Max", [p + "hi0", "pt_zero"], [p + "hi"]),
            make("Min", [p + "lo0", "pt_zero"], [p + "lo"]),
            make("Sub", [p + "hi", p + "lo"], [p + "range0"]),
            make("Max", [p + "range0", "pt_eps"], [p + "range"]),
            make("Div", [p + "range", "pt_255"], [p + "s"]),
            make("Div", [p + "lo", p + "s"], [p + "lo_s"]),
            make("Round", [p + "lo_s"], [p + "neg_zp"]),
            make("Neg", [p + "neg_zp"], [p + "zp_f"]),
            make("Cast", [p + "zp_f"], [p + "zp"], to=TensorProto.UINT8),
            make("QuantizeLinear", [p + "x", p + "s", p + "zp"], [p + "xq"], axis=-1, block_size=int(w.shape[0])),
            make("MatMulIntegerToFloat", [p + "xq", p + "w", "pt_one", p + "ws"], [p + "y0"],
                 domain="com.microsoft"),
            make("Mul", [p + "neg_zp", p + "col"], [p + "fix"]),
            make("Add", [p + "y0", p + "fix"], [p + "y1"]),
            make("Mul", [p + "y1", p + "s"], [node.output[0]], name=node.name),
        ]
    nodes = []
    for node in graph.node:
        nodes.extend(replaced.get(node.output[0], [node]) if node.op_type == "MatMul" else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + consts)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a sentence-transformers model directory (model.onnx, tokenizer.json)")
    parser.add_argument("out", type=Path, help="the model.onnx to write")
    parser.add_argument("--alpha", type=float, default=0.5, help="smoothing strength (0.5: measured best of 0.3-0.9)")
    parser.add_argument("--calibration", type=int, default=150, help="calibration texts")
    args = parser.parse_args()
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(args.src / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()  # the default's tokenizer.json pads every input to 128 tokens
    model = onnx.load(str(args.src / "model.onnx"))
    # Blocked QuantizeLinear needs opset 21; the converter rewrites the ops whose form changed since.
    model = onnx.version_converter.convert_version(model, 21)
    texts = stdlib_texts()[: args.calibration]
    largest = calibrate(model, tokenizer, texts)
    count = rewrite(model, largest, args.alpha)
    onnx.checker.check_model(model)
    onnx.save(model, str(args.out))
    print(f"per-token int8: {count} MatMuls quantized, smoothing alpha {args.alpha}, {len(texts)} calibration texts"
          f" -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
