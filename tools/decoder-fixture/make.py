#!/usr/bin/env python3
"""Builds a tiny random-weight Qwen3 embedding model and the vectors sentence-transformers computes with it.

What it writes (OUT, default tests/data/qwen3-tiny), a sentence-transformers model directory laid out as the
Qwen3-Embedding repositories are, with several ONNX exports of the same weights selected by akidbd's `model.file`:

  model.onnx                      inputs input_ids, attention_mask; output last_hidden_state
  model_position_ids.onnx         inputs input_ids, attention_mask, position_ids
  model_external.onnx (+ _data)   as model.onnx, weights in an external data file
  model_fp16.onnx                 the whole model in float16 (weights, activations, output)
  model_fp16_output.onnx          as model.onnx, output cast to float16
  model_bf16_output.onnx          as model.onnx, output cast to bfloat16
  model_with_past.onnx            inputs with past_key_values.* (akidbd refuses it; see README)
  model_odd_input.onnx            an extra input akidbd cannot feed (pixel_values), to be refused by name
  references.jsonl                one line per case: texts, options, and sentence-transformers' vectors

and OUT-dense/: the same transformer with a Dense head (modules.json: Transformer, Pooling, Dense, Normalize),
exported as model.onnx with a `sentence_embedding` output (the whole pipeline) and as model_no_head.onnx with only
last_hidden_state (which akidbd must refuse: it cannot apply the Dense module itself).

The tokenizer is a byte-level BPE trained here on the texts below, built from the same pieces as Qwen2's
(NFC, Qwen's split regex, byte-level), with a TemplateProcessing post-processor that appends <|endoftext|> as
Qwen3-Embedding's tokenizer.json does. The script checks that sentence-transformers tokenizes every reference text
to the ids that tokenizer.json gives (what akidbd uses) and fails otherwise.

Needs: torch, transformers, sentence-transformers, onnx, onnxruntime (pip). Downloads nothing else.

  python3 tools/decoder-fixture/make.py                        # the committed test fixture (a few hundred KB)
  python3 tools/decoder-fixture/make.py --full-size --out DIR  # Qwen3-Embedding-0.6B's exact shape (2.4 GB)
  python3 tools/decoder-fixture/make.py --full-size --attention-op --out DIR  # the same, opset 23 Attention
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper
from sentence_transformers import SentenceTransformer, models
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

EOS = "<|endoftext|>"
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
LITERAL_PROMPT = "Represent this robot command: "

CORPUS = [
    "the robot picks up the red cup",
    "Move the arm to the charging station and wait there.",
    "What is the capital of France?",
    "A decoder embedding model pools the last token of each input.",
    "Left padding keeps the last real token at the end of every row.",
    "Temperature of the GPU is 81 degrees, throttling the batcher.",
    "Das ist ein Test auf Deutsch mit Umlauten: äöü ß.",
    "日本語のテキストも埋め込みます。",
    "emoji 🤖🦾 and symbols <>&%$#@!",
    "x",
    "OK",
    "   leading and trailing spaces   ",
    "line one\nline two\n\nline four",
    "numbers 1234567890 and 3.14159 and 2e-8",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Robots embed the same texts again and again: commands, labels, prompts. " * 10,
    "In a warehouse, the mobile manipulator scans shelves, plans a path around people and forklifts, grasps "
    "boxes of unknown weight, and reports every step to the fleet manager over a lossy wireless link.",
    "Paris is the capital and most populous city of France.",
    "Instructions: stop, go, turn left, turn right, slow down, speed up.",
    "mixed CASE Words And Punctuation... really?!",
]
TRAIN_EXTRA = [
    "query passage retrieve relevant answer search web given instruct represent command",
    "the of and to in is that for it with as was on be at by this had not are but from or have an they which",
]


def build_tokenizer(vocab_size):
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3 + TRAIN_EXTRA + [QUERY_PROMPT, LITERAL_PROMPT], trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {EOS}:0", pair=f"$A:0 {EOS}:0 $B:1 {EOS}:1", special_tokens=[(EOS, eos_id)]
    )
    return tok


def export(module, args, names, outputs, path, dynamic):
    torch.onnx.export(
        module,
        tuple(args),
        path,
        input_names=names,
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    # By path: a graph over 2 GB keeps its weights in files beside it, which only a path-based check reads.
    onnx.checker.check_model(path)


def export_attention_op(module, ids, mask, path, external_data=True):
    """input_ids, attention_mask, position_ids -> last_hidden_state at ONNX opset 23 through torch's dynamo exporter:
    SDPA becomes one Attention node per layer (with RotaryEmbedding and RMSNormalization), which ONNX Runtime runs
    keeping one batch x heads x seq x seq tensor per layer instead of the four or five of attention spelled out
    (export.py --attention-op). The module's model must use attn_implementation "sdpa"."""
    positions = torch.arange(ids.shape[1]).expand_as(ids).contiguous()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: seq}
    torch.onnx.export(module, (ids, mask, positions), path, input_names=["input_ids", "attention_mask", "position_ids"],
                      output_names=["last_hidden_state"], dynamic_shapes=(axes, axes, axes), opset_version=23,
                      dynamo=True, external_data=external_data)
    onnx.checker.check_model(path)


class Hidden(torch.nn.Module):
    """input_ids, attention_mask[, position_ids] -> last_hidden_state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state


class WithPast(torch.nn.Module):
    """A KV-cache export: past_key_values.* inputs, present.* outputs (what `-with-past` tasks produce)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, k0, v0):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        cache.update(k0, v0, 0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        return out.last_hidden_state


class Pipeline(torch.nn.Module):
    """The whole sentence-transformers pipeline in one graph: last-token pooling (left padded), Dense, Normalize."""

    def __init__(self, model, dense):
        super().__init__()
        self.model = model
        self.dense = dense

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = hidden[:, -1]
        out = self.dense(pooled)
        return hidden, torch.nn.functional.normalize(out, p=2, dim=1)


def cast_output(src, dst, elem_type):
    model = onnx.load(src)
    graph = model.graph
    out = graph.output[0]
    inner = out.name + "_f32"
    for node in graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
    graph.node.append(helper.make_node("Cast", [inner], [out.name], to=elem_type))
    out.type.tensor_type.elem_type = elem_type
    onnx.checker.check_model(model)
    onnx.save(model, dst)


def st_dir(base, transformer_dir, max_seq_length, dense_out=None, seed=0):
    transformer = models.Transformer(transformer_dir, max_seq_length=max_seq_length)
    dim = transformer.get_word_embedding_dimension()
    modules = [transformer, models.Pooling(dim, pooling_mode="lasttoken")]
    if dense_out:
        torch.manual_seed(seed + 1)
        modules.append(models.Dense(dim, dense_out, bias=True, activation_function=torch.nn.Identity()))
    modules.append(models.Normalize())
    st = SentenceTransformer(
        modules=modules,
        prompts={"query": QUERY_PROMPT, "document": ""},
        default_prompt_name=None,
        device="cpu",
    )
    st.save(base)
    return SentenceTransformer(base, device="cpu")


def check_tokens(st, tokenizer_path, texts, max_seq_length):
    """sentence-transformers must tokenize as tokenizer.json (with truncation at max_seq_length) does."""
    ref = Tokenizer.from_file(tokenizer_path)
    ref.no_padding()
    ref.enable_truncation(max_seq_length)
    for text in texts:
        features = st.tokenize([text])
        got = [int(i) for i, m in zip(features["input_ids"][0], features["attention_mask"][0]) if m]
        want = ref.encode(text).ids
        if got != want:
            sys.exit(f"tokenizer mismatch for {text[:40]!r}:\n sentence-transformers {got}\n tokenizer.json {want}")


def references(st, max_seq_length, tokenizer_path):
    ref_tok = Tokenizer.from_file(tokenizer_path)
    ref_tok.no_padding()
    ref_tok.enable_truncation(max_seq_length)
    prompted = [QUERY_PROMPT + t for t in CORPUS] + [LITERAL_PROMPT + t for t in CORPUS]
    check_tokens(st, tokenizer_path, CORPUS + prompted, max_seq_length)

    def case(name, texts, vectors, **options):
        joined = [options.get("prompt_text", "") + t for t in texts]
        tokens = [len(ref_tok.encode(t).ids) for t in joined]
        options.pop("prompt_text", None)
        return {
            "case": name,
            "texts": texts,
            "options": options,
            "tokens": tokens,
            "embeddings": [[float(x) for x in v] for v in vectors],
        }

    enc = lambda texts, **kw: st.encode(texts, convert_to_numpy=True, **kw)  # noqa: E731
    cases = [
        case("documents_batched", CORPUS, enc(CORPUS, batch_size=32)),
        case("documents_alone", CORPUS[:6], np.stack([enc([t], batch_size=1)[0] for t in CORPUS[:6]])),
        case(
            "query_prompt_name",
            CORPUS,
            enc(CORPUS, batch_size=32, prompt_name="query"),
            prompt_name="query",
            prompt_text=QUERY_PROMPT,
        ),
        case(
            "literal_prompt",
            CORPUS,
            enc(CORPUS, batch_size=32, prompt=LITERAL_PROMPT),
            prompt=LITERAL_PROMPT,
            prompt_text=LITERAL_PROMPT,
        ),
        case("dimensions_16", CORPUS, enc(CORPUS, batch_size=32, truncate_dim=16), dimensions=16),
    ]
    truncated = [c for c in cases[0]["tokens"] if c >= max_seq_length]
    if len(truncated) < 2:
        sys.exit(f"expected several over-long texts at max_seq_length {max_seq_length}, got {len(truncated)}")
    return cases


def ort_check(path, st, texts, position_ids=False, tolerance=1e-4):
    """The export gives sentence-transformers' vectors through onnxruntime (left padding, last token)."""
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feats = st.tokenize(texts)
    ids, mask = feats["input_ids"].numpy(), feats["attention_mask"].numpy()
    feed = {"input_ids": ids, "attention_mask": mask}
    if position_ids:
        feed["position_ids"] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)
    hidden = sess.run(None, feed)[0].astype(np.float32)
    got = hidden[:, -1]
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    want = st.encode(texts, batch_size=len(texts))
    worst = float(np.min(np.sum(got * want, axis=1)))
    if worst < 1 - tolerance:
        sys.exit(f"{path}: onnxruntime vs sentence-transformers min cosine {worst}")
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/data/qwen3-tiny")
    parser.add_argument("--full-size", action="store_true", help="Qwen3-Embedding-0.6B's shape (2.4 GB, slow)")
    parser.add_argument("--max-seq-length", type=int, help="default: 80, or 32768 (the real model's) with --full-size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-weights", action="store_true", help="keep the safetensors (for export.py)")
    parser.add_argument("--attention-op", action="store_true",
                        help="with --full-size: export at opset 23 with Attention operators (as export.py --attention-op)")
    args = parser.parse_args()
    args.max_seq_length = args.max_seq_length or (32768 if args.full_size else 80)
    torch.manual_seed(args.seed)
    if args.full_size:
        shape = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, vocab=151669, max_position=32768)
    else:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab=600, max_position=512)

    out = os.path.abspath(args.out)
    dense_out = out + "-dense"
    for d in (out, dense_out):
        shutil.rmtree(d, ignore_errors=True)
    work = tempfile.mkdtemp()
    tok = build_tokenizer(min(shape["vocab"], 600))
    tok_path = os.path.join(work, "tokenizer.json")
    tok.save(tok_path)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, padding_side="left")
    config = Qwen3Config(
        vocab_size=shape["vocab"] if args.full_size else tok.get_vocab_size(),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        head_dim=shape["head_dim"],
        max_position_embeddings=shape["max_position"],
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(EOS),
        attn_implementation="eager",
    )
    model = Qwen3Model(config).eval()
    if not args.full_size:
        # Random init at std 0.02 makes every vector nearly alike; wider weights make the vectors tell texts apart.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(4.0)
    transformer_dir = os.path.join(work, "transformer")
    model.save_pretrained(transformer_dir)
    hf_tok.save_pretrained(transformer_dir)

    st = st_dir(out, transformer_dir, args.max_seq_length)
    tokenizer_json = os.path.join(out, "tokenizer.json")
    cases = [] if args.full_size else references(st, args.max_seq_length, tokenizer_json)
    hidden = Hidden(st[0].auto_model.eval())
    sample = st.tokenize(CORPUS[:3])
    ids, mask = sample["input_ids"], sample["attention_mask"]
    seq_axes = {0: "batch", 1: "sequence"}
    if args.full_size and args.attention_op:
        sdpa = Qwen3Model.from_pretrained(transformer_dir, attn_implementation="sdpa").eval()
        export_attention_op(Hidden(sdpa), ids, mask, os.path.join(out, "model.onnx"))
    else:
        export(hidden, [ids, mask], ["input_ids", "attention_mask"], ["last_hidden_state"],
               os.path.join(out, "model.onnx"),
               {"input_ids": seq_axes, "attention_mask": seq_axes, "last_hidden_state": seq_axes})
    if args.full_size:
        # Only what a benchmark needs: the export, its weights in one external data file, no references.
        path = os.path.join(out, "model.onnx")
        before = set(os.listdir(out))
        if not args.attention_op:
            graph = onnx.load(path)
            onnx.save_model(graph, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location="model.onnx_data", size_threshold=1024)
        for name in {n for n in before if not n.startswith("model.onnx")}:
            full = os.path.join(out, name)
            if os.path.isfile(full) and not name.endswith((".json", ".md", ".txt", ".safetensors")):
                os.remove(full)
        for name in os.listdir(out):
            if name.endswith(".safetensors") or name == "README.md":
                os.remove(os.path.join(out, name))
        shutil.rmtree(work)
        print(json.dumps({"out": out, "files": sorted(os.listdir(out))}, indent=1))
        return
    positions = torch.arange(ids.shape[1]).expand_as(ids).contiguous()
    export(hidden, [ids, mask, positions], ["input_ids", "attention_mask", "position_ids"], ["last_hidden_state"],
           os.path.join(out, "model_position_ids.onnx"),
           {"input_ids": seq_axes, "attention_mask": seq_axes, "position_ids": seq_axes,
            "last_hidden_state": seq_axes})
    graph = onnx.load(os.path.join(out, "model.onnx"))
    onnx.save_model(graph, os.path.join(out, "model_external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model_external.onnx_data", size_threshold=0)
    cast_output(os.path.join(out, "model.onnx"), os.path.join(out, "model_fp16_output.onnx"), TensorProto.FLOAT16)
    cast_output(os.path.join(out, "model.onnx"), os.path.join(out, "model_bf16_output.onnx"), TensorProto.BFLOAT16)
    if not args.full_size:
        kv = (ids.shape[0], config.num_key_value_heads, 0, config.head_dim)
        past_mask = torch.ones_like(ids)
        try:
            export(WithPast(st[0].auto_model.eval()), [ids, past_mask, torch.zeros(kv), torch.zeros(kv)],
                   ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"],
                   ["last_hidden_state"], os.path.join(out, "model_with_past.onnx"),
                   {"input_ids": seq_axes, "attention_mask": seq_axes,
                    "past_key_values.0.key": {0: "batch", 2: "past"}, "past_key_values.0.value": {0: "batch", 2: "past"},
                    "last_hidden_state": seq_axes})
        except Exception as err:  # noqa: BLE001 - the with-past graph is only used to be refused
            print(f"note: with-past export failed ({err}); writing a graph that merely declares the inputs")
            declared = onnx.load(os.path.join(out, "model.onnx"))
            for name in ("past_key_values.0.key", "past_key_values.0.value"):
                declared.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2, "past", 16]))
            onnx.save(declared, os.path.join(out, "model_with_past.onnx"))
    # A graph with an input akidbd cannot feed (it must refuse it by name).
    odd = onnx.load(os.path.join(out, "model.onnx"))
    odd.graph.input.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3]))
    onnx.save(odd, os.path.join(out, "model_odd_input.onnx"))
    # The same transformer with SDPA attention, exported at opset 23 (one Attention node per layer).
    sdpa = Qwen3Model.from_pretrained(transformer_dir, attn_implementation="sdpa").eval()
    export_attention_op(Hidden(sdpa), ids, mask, os.path.join(out, "model_attention_op.onnx"), external_data=False)
    checks = {
        "model_attention_op.onnx": ort_check(os.path.join(out, "model_attention_op.onnx"), st, CORPUS, True),
        "model.onnx": ort_check(os.path.join(out, "model.onnx"), st, CORPUS),
        "model_position_ids.onnx": ort_check(os.path.join(out, "model_position_ids.onnx"), st, CORPUS, True),
        "model_external.onnx": ort_check(os.path.join(out, "model_external.onnx"), st, CORPUS),
    }
    with open(os.path.join(out, "references.jsonl"), "w") as f:
        for c in cases:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")

    # The Dense-head model: the same transformer, a Dense layer 64 -> 32, Normalize.
    dense_st = st_dir(dense_out, transformer_dir, args.max_seq_length, dense_out=shape["hidden_size"] // 2,
                      seed=args.seed)
    pipeline = Pipeline(dense_st[0].auto_model.eval(), dense_st[2].linear).eval()
    export(pipeline, [ids, mask], ["input_ids", "attention_mask"], ["last_hidden_state", "sentence_embedding"],
           os.path.join(dense_out, "model.onnx"),
           {"input_ids": seq_axes, "attention_mask": seq_axes, "last_hidden_state": seq_axes,
            "sentence_embedding": {0: "batch"}})
    shutil.copy(os.path.join(out, "model.onnx"), os.path.join(dense_out, "model_no_head.onnx"))
    dense_cases = references(dense_st, args.max_seq_length, os.path.join(dense_out, "tokenizer.json"))
    with open(os.path.join(dense_out, "references.jsonl"), "w") as f:
        for c in dense_cases:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")

    # An fp16 model (weights and activations): the layout GPUs are served with; ONNX Runtime's CPU provider runs it.
    export(Hidden(st[0].auto_model.eval().half()), [ids, mask], ["input_ids", "attention_mask"], ["last_hidden_state"],
           os.path.join(out, "model_fp16.onnx"),
           {"input_ids": seq_axes, "attention_mask": seq_axes, "last_hidden_state": seq_axes})

    for d in (out, dense_out):
        for name in os.listdir(d):
            if (name.endswith(".safetensors") and not args.keep_weights) or name == "README.md":
                os.remove(os.path.join(d, name))
    shutil.rmtree(work)
    print(json.dumps({"out": out, "dense": dense_out, "ort_vs_st_min_cosine": checks}, indent=1))


if __name__ == "__main__":
    main()
