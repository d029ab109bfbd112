#!/usr/bin/env python3
"""Exports a sentence-transformers decoder model (e.g. Qwen3-Embedding-0.6B/4B/8B) to a directory akidbd serves.

  python3 tools/decoder-fixture/export.py SRC OUT [--fp16] [--check] [--attention-op]

SRC is a local sentence-transformers model directory (a downloaded Qwen/Qwen3-Embedding-0.6B, say: akidbd and this
script never download). OUT receives model.onnx — the transformer alone, inputs input_ids and attention_mask,
output last_hidden_state, no KV cache (what last-token pooling needs) — with its weights in model.onnx_data when
they pass 1.5 GB, and every sentence-transformers file of SRC (tokenizer.json, modules.json, 1_Pooling/,
config_sentence_transformers.json with the prompts, ...), so that `akidbd --model OUT` serves it.

--attention-op exports with the ONNX opset 23 Attention, RotaryEmbedding and RMSNormalization operators (torch's
dynamo exporter, SDPA attention) and a position_ids input, instead of attention spelled out as MatMul, Add,
Softmax, IsNaN, Where over batch x heads x seq x seq tensors. ONNX Runtime's CPU kernel keeps one such tensor per
layer where the spelled-out graph keeps four or five at once: on a 0.6B-shaped model with a 3,000-token input,
akidbd's peak resident memory fell from 4.51 to 2.66 GiB (weights: 2.2 GiB). Needs ONNX Runtime with opset 23
(1.32 here).

--fp16 exports half-precision weights and activations for GPUs (TensorRT, CUDA); ONNX Runtime's CPU provider
runs few fp16 kernels, so keep fp32 for CPU devices. --check compares onnxruntime's vectors for a few texts with
sentence-transformers' (fp32 exports only).

Needs torch, transformers, sentence-transformers, onnx and onnxruntime. Uses the same export code as the test
fixture (make.py), which the integration tests verify against sentence-transformers in every layout.
"""

import argparse
import os
import shutil

import numpy as np
import onnx
import torch
from sentence_transformers import SentenceTransformer

from make import CORPUS, Hidden, export, export_attention_op, ort_check

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".onnx_data", ".msgpack", ".h5")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--attention-op", action="store_true")
    args = parser.parse_args()

    kwargs = {"attn_implementation": "sdpa"} if args.attention_op else {}
    st = SentenceTransformer(args.src, device="cpu", model_kwargs=kwargs)
    model = st[0].auto_model.eval()
    if args.fp16:
        model = model.half()
    os.makedirs(args.out, exist_ok=True)
    for root, _dirs, files in os.walk(args.src):
        rel = os.path.relpath(root, args.src)
        if rel.startswith(("onnx", "openvino", ".")) and rel != ".":
            continue
        for name in files:
            if name.endswith(WEIGHT_SUFFIXES) and rel == ".":
                continue
            os.makedirs(os.path.join(args.out, rel), exist_ok=True)
            shutil.copy(os.path.join(root, name), os.path.join(args.out, rel, name))

    sample = st.tokenize(CORPUS[:3])
    axes = {0: "batch", 1: "sequence"}
    path = os.path.join(args.out, "model.onnx")
    if args.attention_op:
        export_attention_op(Hidden(model), sample["input_ids"], sample["attention_mask"], path)
    else:
        export(Hidden(model), [sample["input_ids"], sample["attention_mask"]], ["input_ids", "attention_mask"],
               ["last_hidden_state"], path, {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    if os.path.getsize(path) > 1_500_000_000 or any(f.startswith("onnx__") for f in os.listdir(args.out)):
        graph = onnx.load(path)
        onnx.save_model(graph, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx_data", size_threshold=1024)
        for name in os.listdir(args.out):
            if name.startswith("onnx__") or name.startswith("model.") and name.endswith(".weight"):
                os.remove(os.path.join(args.out, name))
    if args.check and not args.fp16:
        worst = ort_check(path, st, CORPUS[:8], position_ids=args.attention_op)
        print(f"onnxruntime vs sentence-transformers: min cosine {worst:.9f}")
    print(f"exported {args.src} -> {args.out} ({'fp16' if args.fp16 else 'fp32'}); serve with: akidbd --model {args.out}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    np.set_printoptions(precision=4)
    main()
