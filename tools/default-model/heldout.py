"""Accuracy of default-model options on texts that are neither the fixture nor calibration texts.

    heldout.py OPTION_DIR [OPTION_DIR ...]

Compares each option's vectors with the default model's (models/all-MiniLM-L6-v2, exact to sentence-transformers:
min cosine 1.000000 on the fixture) on ~500 texts: standard-library docstrings past the ones
per_token_int8.py calibrates on, paragraphs and code of this repository, generated word salads of 1-300 words, and
odd inputs (one character, other scripts, emoji, repeated tokens). Each text alone and in batches of 8 (padding,
neighbours): an option whose activations are quantized per batch gives different vectors for the two.
Prints the minimum and mean cosine per token-length band.
"""
import random
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from per_token_int8 import stdlib_texts  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ODD = ["a", "?", "OK", "it", "hello", "   spaced   out   ", "😀🤖🚀 robots!", "東京は日本の首都です。",
       "Der schnelle braune Fuchs springt über den faulen Hund.", "¿Dónde está la biblioteca?", "Привет, как дела?",
       "مرحبا بالعالم", "1234567890 " * 10, "a" * 36, "the " * 10, "https://example.com/path?query=1&x=2#frag",
       "SELECT * FROM users WHERE id = 42;", '{"key": [1, 2, 3], "nested": {"a": null}}',
       "GPU temperature 95 °C, power 300 W, throttling.", "x" * 600, "Lorem ipsum dolor sit amet, " * 40]


def texts():
    rng = random.Random(7)
    out = stdlib_texts()[150:300]
    for path in sorted((REPO / "src").rglob("*.rs"))[:40]:
        chunks = [c.strip() for c in re.split(r"\n\s*\n", path.read_text()) if c.strip()]
        out += rng.sample(chunks, min(4, len(chunks)))
    for doc in ("README.md", "docs/ARCHITECTURE.md", "docs/PROTOCOL.md"):
        paras = [p.strip() for p in (REPO / doc).read_text().split("\n\n") if len(p.strip()) > 20]
        out += rng.sample(paras, min(40, len(paras)))
    words = (REPO / "README.md").read_text().split()
    for _ in range(60):
        out.append(" ".join(rng.choice(words) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 40, 120, 300]))))
    return out + ODD


def embed(session, encodings, batch):
    names = {i.name for i in session.get_inputs()}
    vectors = []
    for start in range(0, len(encodings), batch):
        chunk = encodings[start:start + batch]
        width = max(len(e.ids) for e in chunk)
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(chunk):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        vectors.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(vectors)


def main():
    ort.set_default_logger_severity(3)
    default = REPO / "models/all-MiniLM-L6-v2"
    tokenizer = Tokenizer.from_file(str(default / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()  # the default's tokenizer.json pads every input to 128 tokens
    corpus = texts()
    encodings = [tokenizer.encode(t) for t in corpus]
    lengths = np.array([len(e.ids) for e in encodings])
    reference = embed(ort.InferenceSession(str(default / "model.onnx"), providers=["CPUExecutionProvider"]),
                      encodings, 1)
    print(f"{len(corpus)} texts, {lengths.min()}-{lengths.max()} tokens; cosine to the default model")
    for option in sys.argv[1:]:
        session = ort.InferenceSession(str(Path(option) / "model.onnx"), providers=["CPUExecutionProvider"])
        for batch in (1, 8):
            cos = (embed(session, encodings, batch) * reference).sum(1)
            worst = corpus[int(cos.argmin())][:30]
            bands = []
            for lo, hi in ((1, 8), (8, 32), (32, 128), (128, 257)):
                band = cos[(lengths >= lo) & (lengths < hi)]
                bands.append(f"{lo}-{hi - 1}: {band.min():.6f}")
            print(f"{Path(option).name} batch {batch}: min {cos.min():.6f} ({worst!r}) mean {cos.mean():.7f}"
                  f" | by tokens {', '.join(bands)}")


if __name__ == "__main__":
    main()
