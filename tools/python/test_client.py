"""Checks the Python client against a running akidbd (plain asserts of a kind: every check is counted).

    python3 -I tools/python/test_client.py --socket PATH --fixtures FILE [--no-numpy] [--allow-source-tree]

It tests the *installed* package (`pip install ./tools/python`): run it with an interpreter that has it, and with
-I so that this directory is not on sys.path. It fails if akidb_client is imported from the source tree, unless
--allow-source-tree is given.

The daemon must already be running on PATH with all-MiniLM-L6-v2 (the Rust test tests/it/python.rs starts one).
FILE holds JSON lines with "text" and "embedding" (sentence-transformers' reference vectors). ``--no-numpy``
hides numpy before the client is imported, so the pure-Python (list) path is the one tested.

The last line printed is "N passed, M failed"; the exit status is 0 when M is 0, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import traceback
from typing import Any, Callable, List, Sequence

# Parse before importing the client: --no-numpy must hide numpy first.
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--socket", required=True, help="the running daemon's socket")
parser.add_argument("--fixtures", required=True, help="JSON lines with 'text' and 'embedding'")
parser.add_argument("--no-numpy", action="store_true", help="force the pure-Python path (numpy made unimportable)")
parser.add_argument("-v", "--verbose", action="store_true", help="print every check")
parser.add_argument("--allow-source-tree", action="store_true", help="accept akidb_client from tools/python")
args = parser.parse_args()

if args.no_numpy:
    sys.modules["numpy"] = None  # type: ignore[assignment]  # `import numpy` now raises ImportError

import akidb_client  # noqa: E402
from akidb_client import AkidbError, AsyncClient, Client  # noqa: E402

MIN_COSINE = 0.997  # against the sentence-transformers reference
SAME = 0.99999  # two embeddings of the same text by the daemon

passed = 0
failed = 0


def check(ok: Any, what: str) -> bool:
    """Counts one check; prints it when it fails (or always with --verbose)."""
    global passed, failed
    if ok:
        passed += 1
        if args.verbose:
            print("ok:", what)
    else:
        failed += 1
        print("FAILED:", what)
    return bool(ok)


def raises(code: str, what: str, call: Callable[[], Any]) -> None:
    """Checks that ``call`` raises AkidbError with ``code``."""
    try:
        call()
    except AkidbError as err:
        check(err.code == code, f"{what}: code {err.code!r} (want {code!r}): {err.message}")
        return
    check(False, f"{what}: no AkidbError {code!r}")


def rows_of(vectors: Any) -> List[List[float]]:
    """Vectors as plain lists, whichever form the client returned."""
    return [[float(x) for x in row] for row in vectors]


def norm(a: Sequence[float]) -> float:
    return math.sqrt(sum(float(x) * float(x) for x in a))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    a = [float(x) for x in a]
    b = [float(x) for x in b]
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def check_form(vectors: Any, n: int, dim: int, what: str) -> None:
    """The result's type and shape: an (n, dim) float32 array with numpy, else n lists of dim floats."""
    if akidb_client.HAVE_NUMPY:
        import numpy as np

        check(isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (n, dim),
              f"{what}: ({n}, {dim}) float32 array, got {type(vectors).__name__} "
              f"{getattr(vectors, 'dtype', None)} {getattr(vectors, 'shape', None)}")
    else:
        check(isinstance(vectors, list) and len(vectors) == n
              and all(isinstance(r, list) and len(r) == dim and all(isinstance(x, float) for x in r)
                      for r in vectors),
              f"{what}: {n} lists of {dim} floats")


def run(client: Client, rows: List[dict]) -> None:
    texts = [r["text"] for r in rows]

    # the installed package, not the file in the repository
    here = os.path.dirname(os.path.abspath(__file__))
    installed = not os.path.abspath(akidb_client.__file__).startswith(here + os.sep)
    check(installed or args.allow_source_tree, f"akidb_client is the installed package ({akidb_client.__file__})")
    typed = os.path.isfile(os.path.join(os.path.dirname(akidb_client.__file__), "py.typed"))
    check(typed, "the package is marked typed (py.typed)")

    # numpy really is or is not in use
    if args.no_numpy:
        check(not akidb_client.HAVE_NUMPY, "--no-numpy: the client runs without numpy")
    else:
        check(akidb_client.HAVE_NUMPY, "numpy is importable (run with --no-numpy to test without it)")

    # health, info, status
    check(client.health() == "ready", "health() == 'ready'")
    info = client.info()
    check(info["dim"] == 384, f"info()['dim'] == 384 (got {info.get('dim')})")
    check(info["protocol"] == 1 and info["ok"] is True, "info() protocol 1")
    dim = int(info["dim"])
    status = client.status()
    check(status["status"] == "ready" and len(status["devices"]) >= 1, "status(): ready, with devices")
    check(set(status["queues"]) == {"realtime", "normal", "bulk"}, f"status() queues {sorted(status['queues'])}")

    # every text in batches of 16, against the reference
    batched: List[List[float]] = []
    for start in range(0, len(rows), 16):
        chunk = rows[start:start + 16]
        vectors = client.embed([r["text"] for r in chunk])
        check_form(vectors, len(chunk), dim, f"batch at {start}")
        batched.extend(rows_of(vectors))
    worst = 1.0
    for i, (vector, row) in enumerate(zip(batched, rows)):
        c = cosine(vector, row["embedding"])
        worst = min(worst, c)
        check(c >= MIN_COSINE, f"text {i} ({row['text'][:40]!r}): cosine {c:.6f} >= {MIN_COSINE}")
    print(f"min cosine vs reference over {len(rows)} texts (batches of 16): {worst:.5f}")

    # some one at a time: same reference, and the same vector as in a batch
    singles = list(range(0, len(rows), max(1, len(rows) // 12)))
    for i in singles:
        vector = client.embed([texts[i]], priority="realtime")
        check_form(vector, 1, dim, f"single {i}")
        c = cosine(vector[0], rows[i]["embedding"])
        check(c >= MIN_COSINE, f"text {i} alone: cosine {c:.6f} >= {MIN_COSINE}")
        check(cosine(vector[0], batched[i]) >= 0.9999, f"text {i} alone == in a batch")

    # options
    text = texts[0]
    base = rows_of(client.embed([text]))[0]
    check(abs(norm(base) - 1.0) < 1e-4, f"normalized by default (|v| = {norm(base):.6f})")
    raw = rows_of(client.embed([text], normalize=False))[0]
    check(abs(norm(raw) - 1.0) > 1e-3 and cosine(raw, base) >= SAME, f"normalize=False (|v| = {norm(raw):.4f})")
    short = client.embed([text, texts[1]], dimensions=32)
    check_form(short, 2, 32, "dimensions=32")
    short = rows_of(short)
    check(cosine(short[0], base[:32]) >= SAME and abs(norm(short[0]) - 1.0) < 1e-4,
          "dimensions=32 is the first 32, renormalized")
    as_array = client.embed([text, texts[1]], encoding="array")
    check_form(as_array, 2, dim, "encoding='array'")
    check(cosine(rows_of(as_array)[0], base) >= SAME, "encoding='array' gives the same vector")
    for priority in ("realtime", "normal", "bulk"):
        v = rows_of(client.embed([text], priority=priority, deadline_ms=60_000))[0]
        check(cosine(v, base) >= SAME, f"priority={priority!r} with a deadline")
    v = rows_of(client.embed([text], prompt=""))[0]
    check(cosine(v, base) >= SAME, "prompt='' is no prompt")
    prompted = rows_of(client.embed([text], prompt="query: "))[0]
    joined = rows_of(client.embed(["query: " + text]))[0]
    check(cosine(prompted, joined) >= SAME, "prompt='query: ' is the prompt joined before the text")
    long_text = "the robot arm moves " * 200
    reply = client.result_reply(client.submit([long_text, text]))
    check(reply["truncated"] == [0] and reply["count"] == 2 and reply["dim"] == dim,
          f"result_reply(): long input truncated by default (truncated={reply['truncated']})")
    check(set(reply["timing_us"]) >= {"queue", "inference", "total"}, "result_reply(): timing_us")

    # errors: the right code, and the connection still serves afterwards
    raises("invalid_request", "dimensions=1000", lambda: client.embed([text], dimensions=1000))
    raises("invalid_request", "dimensions=0", lambda: client.embed([text], dimensions=0))
    raises("invalid_request", "unknown priority", lambda: client.embed([text], priority="urgent"))
    raises("invalid_request", "a prompt_name the model does not have",
           lambda: client.embed([text], prompt_name="no-such-prompt"))
    raises("invalid_request", "empty inputs", lambda: client.embed([]))
    raises("input_too_long", "truncate=False on a long input", lambda: client.embed([long_text], truncate=False))
    raises("too_many_inputs", "over max_inputs",
           lambda: client.embed(["x"] * (int(info["max_inputs"]) + 1)))
    try:
        client.embed(text)  # type: ignore[arg-type]
        check(False, "embed(str) raises TypeError")
    except TypeError:
        check(True, "embed(str) raises TypeError")
    try:
        client.embed(["fine", None])  # type: ignore[list-item]
        check(False, "embed([str, None]) raises TypeError")
    except TypeError:
        check(True, "embed([str, None]) raises TypeError")
    check(client.health() == "ready", "the connection serves after errors")

    # pipelining: 20 requests in flight, collected out of order, each equal to a direct embed
    picks = [texts[i % len(texts)] for i in range(20)]
    ids = [client.submit([t], priority=("bulk", "normal", "realtime")[i % 3]) for i, t in enumerate(picks)]
    check(len(set(ids)) == 20 and client.pending == sorted(ids), "submit(): 20 distinct ids in flight")
    check(client.health() == "ready", "health() while 20 embeds are in flight")
    bad = client.submit([text], dimensions=1000)
    order = list(range(20))
    random.Random(7).shuffle(order)
    got = {}
    for k in order[:10]:
        got[k] = rows_of(client.result(ids[k]))[0]
    raises("invalid_request", "a pipelined error", lambda: client.result(bad))
    for k in reversed(order[10:]):
        got[k] = rows_of(client.result(ids[k]))[0]
    check(client.pending == [], "every pipelined reply collected")
    for k in range(20):
        direct = rows_of(client.embed([picks[k]]))[0]
        c = cosine(got[k], direct)
        check(c >= SAME, f"pipelined {k} == direct embed (cosine {c:.7f})")
    try:
        client.result(ids[0])
        check(False, "result() of a collected id raises KeyError")
    except KeyError:
        check(True, "result() of a collected id raises KeyError")


async def run_async(rows: List[dict], expected: List[List[float]]) -> None:
    """The asyncio client: the same vectors, many calls in flight on one connection, errors and close."""
    texts = [r["text"] for r in rows]
    async with await AsyncClient.connect(args.socket, timeout=120.0) as client:
        check(await client.health() == "ready", "AsyncClient.health()")
        info = await client.info()
        check(info["dim"] == len(expected[0]), "AsyncClient.info()")
        n = min(64, len(texts))
        results = await asyncio.gather(*(client.embed([texts[i]], priority=("realtime", "normal", "bulk")[i % 3])
                                         for i in range(n)))
        worst = min(cosine(rows_of(v)[0], expected[i]) for i, v in enumerate(results))
        check(worst >= SAME, f"AsyncClient: {n} concurrent calls on one connection, each its own vector ({worst:.7f})")
        reply = await client.embed_reply(texts[:3], encoding="array", dimensions=16)
        check(reply["count"] == 3 and reply["dim"] == 16 and reply["tokens"] > 0, "AsyncClient.embed_reply()")
        outcomes = await asyncio.gather(client.embed([texts[0]], dimensions=10_000), client.embed([texts[1]]),
                                        return_exceptions=True)
        check(isinstance(outcomes[0], AkidbError) and outcomes[0].code == "invalid_request"
              and not isinstance(outcomes[1], Exception), "AsyncClient: an error reply fails only its own call")
        status = await client.status()
        check(status["status"] == "ready", "AsyncClient.status()")
    try:
        await client.embed(["after close"])
        check(False, "a call after close() raises ConnectionError")
    except ConnectionError:
        check(True, "a call after close() raises ConnectionError")


def main() -> int:
    with open(args.fixtures, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(f"{len(rows)} fixtures, numpy {'off' if args.no_numpy else 'on'}, socket {args.socket}")
    try:
        with Client(args.socket, timeout=120.0) as client:
            run(client, rows)
            expected = [rows_of(client.embed([r["text"]]))[0] for r in rows[:64]]
        asyncio.run(run_async(rows[:64], expected))
    except Exception:  # an unexpected exception is one more failure, not a crash without a summary
        traceback.print_exc()
        check(False, "no unexpected exception")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
