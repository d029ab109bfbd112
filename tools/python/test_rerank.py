#!/usr/bin/env python3
"""The Python client's rerank() against a daemon serving tests/data/rerank-tiny, sync and asyncio.

Run by `make test` (tests/it/rerank.rs) with the installed akidb-client package:
  python test_rerank.py --socket PATH --references tests/data/rerank-tiny/references.jsonl
Prints "N passed, M failed" and exits non-zero on any failure.
"""

import argparse
import asyncio
import json
import sys

from akidb_client import AkidbError, AsyncClient, Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--references", required=True)
    args = parser.parse_args()
    cases = [json.loads(line) for line in open(args.references)]
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok' if ok else 'FAILED'}: {name} {detail}")

    with Client(args.socket) as client:
        for case in cases:
            got = client.rerank(case["query"], case["documents"])
            order = [r["index"] for r in got]
            worst = max(abs(r["score"] - case["scores"][r["index"]]) for r in got)
            check(f"sync order {case['query'][:24]!r}", order == case["rank"], f"{order} vs {case['rank']}")
            check(f"sync scores {case['query'][:24]!r}", worst <= 1e-5, f"worst {worst:.2e}")
        raw = client.rerank(cases[0]["query"], cases[0]["documents"], top_n=2, raw_scores=True, cache=False)
        check("top_n and raw_scores", len(raw) == 2 and abs(raw[0]["score"] - cases[0]["raw_scores"][raw[0]["index"]]) <= 1e-5)
        reply = client.rerank_reply(cases[0]["query"], cases[0]["documents"])
        check("rerank_reply fields", {"results", "model", "tokens", "truncated", "timing_us"} <= set(reply))
        try:
            client.rerank("q", ["d"], model="minilm")
            check("an embedding model is refused", False)
        except AkidbError as err:
            check("an embedding model is refused", err.code == "invalid_request", err.code)
        try:
            client.rerank("q", "not a list")
            check("a string as documents is refused", False)
        except TypeError:
            check("a string as documents is refused", True)

    async def run_async():
        async with await AsyncClient.connect(args.socket) as client:
            replies = await asyncio.gather(*(client.rerank(c["query"], c["documents"]) for c in cases))
            for case, got in zip(cases, replies):
                check(f"async order {case['query'][:24]!r}", [r["index"] for r in got] == case["rank"])
    asyncio.run(run_async())

    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
