"""Checks akidbd's HTTP surface with the official `openai` package and a Prometheus text parser.

    python3 -I tools/python/test_openai.py --url http://127.0.0.1:PORT --socket PATH --api-key KEY

The daemon must be running with the HTTP surface on (`[http] listen`, `api_key = KEY`) and all-MiniLM-L6-v2; the
Rust test tests/it/http.rs starts one. Vectors over HTTP are compared with the same texts over the Unix socket
(akidb_client): they must be identical. The last line printed is "N passed, M failed"; exit status 0 when M is 0.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import traceback
import urllib.error
import urllib.request
from typing import Any, Callable

import numpy as np
import openai
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as classic_text_to_metric_families

from akidb_client import Client

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", required=True, help="http://host:port of the daemon's HTTP surface")
parser.add_argument("--socket", required=True, help="the same daemon's Unix socket")
parser.add_argument("--api-key", required=True)
args = parser.parse_args()

passed = 0
failed = 0

TEXTS = [
    "the robot picks up the red cup",
    "Move the arm to the charging station.",
    "日本語のテキスト",
    "emoji 🤖 and symbols <>&",
    "x",
]


def check(ok: Any, what: str) -> None:
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAILED:", what)


def raises(kind: type, what: str, call: Callable[[], Any]) -> None:
    try:
        call()
        check(False, f"{what}: expected {kind.__name__}")
    except kind as err:
        check(True, what)
        print(f"{what}: {kind.__name__} {getattr(err, 'status_code', '')} {str(err)[:160]}")
    except Exception as err:  # noqa: BLE001
        check(False, f"{what}: expected {kind.__name__}, got {type(err).__name__}: {err}")


def get(path: str, key: str | None = None, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(args.url + path)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("content-type", ""), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read().decode()


def run() -> None:
    client = openai.OpenAI(base_url=args.url + "/v1", api_key=args.api_key, max_retries=0, timeout=60)
    with Client(args.socket) as sock:
        model = sock.info()["model"]
        want = np.asarray(sock.embed(TEXTS), dtype=np.float32)
        want64 = np.asarray(sock.embed(TEXTS, dimensions=64), dtype=np.float32)

    models = client.models.list()
    check([m.id for m in models.data] == [model], f"GET /v1/models lists {model}")

    for encoding in ("float", "base64", None):
        kwargs = {} if encoding is None else {"encoding_format": encoding}
        reply = client.embeddings.create(model=model, input=TEXTS, **kwargs)
        rows = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
        if encoding == "base64":  # asked for explicitly, the client hands the string over as it came
            rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
        got = np.asarray(rows, dtype=np.float32)
        check(got.shape == want.shape and np.array_equal(got, want),
              f"encoding_format={encoding}: identical to the socket's vectors (max diff "
              f"{float(np.max(np.abs(got - want))) if got.shape == want.shape else 'shape'})")
        check(reply.model == model and reply.usage.prompt_tokens > 0
              and reply.usage.total_tokens == reply.usage.prompt_tokens, f"encoding_format={encoding}: model, usage")

    one = client.embeddings.create(model=model, input=TEXTS[0], encoding_format="float")
    check(len(one.data) == 1 and np.array_equal(np.asarray(one.data[0].embedding, dtype=np.float32), want[0]),
          "input as one string")
    short = client.embeddings.create(model=model, input=TEXTS, dimensions=64)
    got64 = np.asarray([d.embedding for d in short.data], dtype=np.float32)
    check(got64.shape == (len(TEXTS), 64) and np.array_equal(got64, want64), "dimensions=64 as on the socket")
    realtime = client.embeddings.create(model=model, input=TEXTS[:1], extra_headers={"x-akidb-priority": "realtime"})
    check(np.array_equal(np.asarray(realtime.data[0].embedding, dtype=np.float32), want[0]),
          "x-akidb-priority: realtime")

    raises(openai.NotFoundError, "an unknown model", lambda: client.embeddings.create(model="no-such-model", input="a"))
    raises(openai.BadRequestError, "an over-long input",
           lambda: client.embeddings.create(model=model, input="the robot arm moves " * 300))
    truncated = client.embeddings.create(model=model, input="the robot arm moves " * 300, extra_body={"truncate": True})
    check(len(truncated.data[0].embedding) == want.shape[1], "an over-long input with truncate: true (akidb field)")
    raises(openai.BadRequestError, "token-id arrays", lambda: client.embeddings.create(model=model, input=[[1, 2, 3]]))
    try:
        client.embeddings.create(model=model, input="a", dimensions=10_000)
        check(False, "dimensions over the model's: expected BadRequestError")
    except openai.BadRequestError as err:
        param = err.body.get("param") if isinstance(err.body, dict) else None
        check(param == "dimensions", f"dimensions over the model's: 400 naming param dimensions ({param})")
    raises(openai.BadRequestError, "an unknown priority",
           lambda: client.embeddings.create(model=model, input="a", extra_headers={"x-akidb-priority": "urgent"}))
    wrong = openai.OpenAI(base_url=args.url + "/v1", api_key="wrong-key", max_retries=0)
    raises(openai.AuthenticationError, "a bad api_key", lambda: wrong.embeddings.create(model=model, input="a"))
    lower = urllib.request.Request(args.url + "/v1/models", headers={"Authorization": f"bearer {args.api_key}"})
    with urllib.request.urlopen(lower, timeout=30) as response:
        check(response.status == 200, "the auth scheme is case-insensitive (Authorization: bearer ...)")
    check(client.models.retrieve(model).id == model, "models.retrieve(id)")
    raises(openai.NotFoundError, "models.retrieve of an unknown model", lambda: client.models.retrieve("no-such-model"))
    # LangChain's OpenAIEmbeddings sends up to 1000 texts per request; OpenAI's own limit is 2048.
    many = client.embeddings.create(model=model, input=[f"document number {i}" for i in range(1000)])
    check(len(many.data) == 1000 and [d.index for d in many.data] == list(range(1000)), "1000 inputs in one request")
    try:
        client.embeddings.create(model=model, input=["x"] * 2049)
        check(False, "2049 inputs: expected BadRequestError")
    except openai.BadRequestError as err:
        code = (err.body or {}).get("code") if isinstance(err.body, dict) else None
        check(code == "too_many_inputs", f"2049 inputs: 400 too_many_inputs ({code})")

    status, _, body = get("/health")
    check(status == 200 and json.loads(body)["status"] == "ready", f"GET /health: {status} {body}")
    status, _, _ = get("/metrics")
    check(status == 401, f"GET /metrics without the key: {status}")
    # As a Prometheus server asks (OpenMetrics first), and as curl or node_exporter-era tools do (classic text).
    prometheus_accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                         "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    status, content_type, text = get("/metrics", args.api_key, prometheus_accept)
    check(status == 200 and "openmetrics" in content_type, f"GET /metrics: {status} {content_type}")
    status, classic_type, classic = get("/metrics", args.api_key)
    check(status == 200 and classic_type.startswith("text/plain") and "version=0.0.4" in classic_type,
          f"GET /metrics without Accept: {status} {classic_type}")
    classic_families = {f.name: f for f in classic_text_to_metric_families(classic)}
    kind = classic_families.get("akidb_requests").type if "akidb_requests" in classic_families else None
    check(kind == "counter", f"classic text parsed by prometheus_client's classic parser: akidb_requests is a {kind}")
    untyped = sorted(n for n, f in classic_families.items() if f.type == "unknown")
    check(not untyped, f"classic text: every family typed (untyped: {untyped})")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families.get("akidb_requests")
    value = requests.samples[0].value if requests and requests.samples else 0
    check(value >= 8, f"/metrics parsed as OpenMetrics text: akidb_requests_total = {value}")
    check({"akidb_up", "akidb_errors", "akidb_latency_seconds", "akidb_device_batches"} <= set(families),
          f"/metrics families: {sorted(families)}")
    errors = {s.labels.get("code"): s.value for s in families["akidb_errors"].samples if s.name.endswith("_total")}
    check(errors.get("input_too_long", 0) >= 1, f"/metrics counts the HTTP errors too: {errors}")
    refused = {code: errors.get(code, 0) for code in ("permission_denied", "too_many_inputs", "unknown_model")}
    check(all(n >= 1 for n in refused.values()), f"/metrics counts refusals of the HTTP layer too: {refused}")


def main() -> int:
    try:
        run()
    except Exception:  # noqa: BLE001 - one more failure, with a summary
        traceback.print_exc()
        check(False, "no unexpected exception")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
