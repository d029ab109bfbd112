"""Checks the Python client against a running akidbd. Run by the Rust integration tests (tests/it/python.rs):

    python3 tools/python/test_client.py --socket PATH --fixtures FILE [--no-numpy]
"""
import argparse
import json
import math
import sys

from akidb_client import AkidbError, Client

checks = {"passed": 0, "failed": 0}


def check(ok: bool, what: str) -> None:
    if ok:
        checks["passed"] += 1
    else:
        checks["failed"] += 1
        print("FAILED:", what)


def cosine(a, b) -> float:
    a = [float(x) for x in a]
    b = [float(x) for x in b]
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--no-numpy", action="store_true")
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.fixtures)]
    with Client(args.socket, use_numpy=not args.no_numpy) as client:
        check(client.health() == "ready", "health is ready")
        check(client.info()["dim"] == 384, "info dim")
        worst = 1.0
        for i in range(0, len(rows), 16):
            chunk = rows[i:i + 16]
            vectors = client.embed([r["text"] for r in chunk])
            check(len(vectors) == len(chunk), "one vector per text")
            worst = min([worst] + [cosine(v, r["embedding"]) for v, r in zip(vectors, chunk)])
        for r in rows[:5]:
            worst = min(worst, cosine(client.embed([r["text"]], priority="realtime")[0], r["embedding"]))
        print(f"min cosine vs sentence-transformers over {len(rows)} texts: {worst:.5f}")
        check(worst >= 0.997, f"min cosine {worst} >= 0.997")
        short = client.embed(["a robot arm"], dimensions=32)
        check(len(short[0]) == 32, "dimensions")
        try:
            client.embed(["x"], dimensions=1000)
            check(False, "dimensions=1000 raises")
        except AkidbError as err:
            check(err.code == "invalid_request", f"error code {err.code}")
        texts = [r["text"] for r in rows[:20]]
        ids = [client.submit([t]) for t in texts]
        for request_id, text in reversed(list(zip(ids, texts))):
            check(cosine(client.result(request_id)[0], client.embed([text])[0]) > 0.99999, "pipelined result")
    print(f"{checks['passed']} passed, {checks['failed']} failed")
    return 0 if checks["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
