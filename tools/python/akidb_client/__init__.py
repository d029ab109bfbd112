"""Python client for akidbd, protocol v1: length-prefixed MessagePack over a Unix socket.

Each frame is a 4-byte big-endian body length followed by the body, one MessagePack map with string keys
(see docs/PROTOCOL.md)::

    from akidb_client import Client

    with Client() as client:                       # the daemon's default socket
        vectors = client.embed(["the robot picks up the red cup"], priority="realtime")
        print(vectors.shape)                       # (1, 384) float32 when numpy is installed

The only dependency is the PyPI package ``msgpack``. When numpy is importable, vectors come back as an
``(n, dim)`` float32 array; otherwise as a list of ``n`` lists of ``dim`` Python floats.

:class:`AsyncClient` offers the same operations to asyncio code (rclpy executors, agents, web services), with
any number of requests in flight on one connection.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Union

import msgpack

try:  # numpy is optional
    import numpy as _np
except ImportError:  # exercised by test_client.py --no-numpy
    _np = None

__all__ = ["Client", "AsyncClient", "AkidbError", "default_socket_path", "PROTOCOL_VERSION", "HAVE_NUMPY"]

#: The protocol version this client speaks.
PROTOCOL_VERSION = 1
#: Whether numpy could be imported (``Client`` then returns arrays unless ``use_numpy=False``).
HAVE_NUMPY = _np is not None

_LENGTH = struct.Struct(">I")
_MAX_FRAME = 0xFFFFFFFF

#: What :meth:`Client.embed` returns: an (n, dim) float32 numpy array, or a list of lists of floats.
Vectors = Union["_np.ndarray", List[List[float]]]


class AkidbError(Exception):
    """The daemon answered with an error reply.

    ``code`` is one of the protocol's machine-readable codes (``invalid_request``, ``overloaded``,
    ``deadline_exceeded``, ...); ``message`` is the daemon's English explanation, for people only;
    ``request_id`` is the id of the request it answers (0 for connection-level errors such as
    ``permission_denied`` and ``frame_too_large``, after which the daemon closes the connection).
    """

    def __init__(self, code: str, message: str, request_id: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


def default_socket_path() -> str:
    """The daemon's default socket: ``$XDG_RUNTIME_DIR/akidb/embed.sock``, else ``/tmp/akidb-<uid>/embed.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "akidb", "embed.sock")
    return f"/tmp/akidb-{os.getuid()}/embed.sock"


def decode_vectors(reply: Dict[str, Any], numpy: Any = None) -> Vectors:
    """The vectors of an ``embed`` reply: an (n, dim) float32 array with ``numpy``, else lists of floats."""
    count, dim, data = int(reply["count"]), int(reply["dim"]), reply["embeddings"]
    if isinstance(data, (bytes, bytearray)):  # encoding "f32": count x dim little-endian float32
        if len(data) != count * dim * 4:
            raise ValueError(f"{len(data)} bytes of embeddings for {count} x {dim} float32")
        if numpy is not None:
            return numpy.frombuffer(data, dtype="<f4").astype(numpy.float32).reshape(count, dim)
        floats = array.array("f")
        floats.frombytes(data)
        if sys.byteorder == "big":
            floats.byteswap()
        flat = floats.tolist()
        return [flat[i * dim:(i + 1) * dim] for i in range(count)]
    # encoding "array": one list of floats per input
    if len(data) != count or any(len(row) != dim for row in data):
        raise ValueError(f"embeddings are not {count} x {dim}")
    if numpy is not None:
        return numpy.asarray(data, dtype=numpy.float32).reshape(count, dim)
    return [[float(x) for x in row] for row in data]


def embed_request(texts: Sequence[str], **options: Any) -> Dict[str, Any]:
    """The body of an ``embed`` request (without ``v`` and ``id``); options that are None are left out."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not a single string")
    inputs = list(texts)
    for index, text in enumerate(inputs):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}, not a string")
    request: Dict[str, Any] = {"op": "embed", "inputs": inputs}
    for key, value in options.items():
        if value is not None:
            request[key] = value
    return request


def rerank_request(query: str, documents: Sequence[str], **options: Any) -> Dict[str, Any]:
    """The body of a ``rerank`` request (without ``v`` and ``id``); options that are None are left out."""
    if not isinstance(query, str):
        raise TypeError(f"query is a {type(query).__name__}, not a string")
    if isinstance(documents, (str, bytes)):
        raise TypeError("documents must be a sequence of strings, not a single string")
    docs = list(documents)
    for index, text in enumerate(docs):
        if not isinstance(text, str):
            raise TypeError(f"documents[{index}] is a {type(text).__name__}, not a string")
    request: Dict[str, Any] = {"op": "rerank", "query": query, "documents": docs}
    for key, value in options.items():
        if value is not None:
            request[key] = value
    return request


def encode_frame(request_id: int, request: Dict[str, Any]) -> bytes:
    """One frame: the u32 big-endian length, then the MessagePack body."""
    body = msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, **request}, use_bin_type=True)
    if len(body) > _MAX_FRAME:
        raise ValueError(f"request of {len(body)} bytes does not fit a frame")
    return _LENGTH.pack(len(body)) + body


def reply_error(reply: Dict[str, Any], request_id: int) -> AkidbError:
    """The :class:`AkidbError` an error reply stands for."""
    error = reply.get("error") or {}
    return AkidbError(str(error.get("code", "unknown")), str(error.get("message", "")), request_id)


class Client:
    """One connection to akidbd. Not thread-safe: use one client per thread.

    ``path``: the socket (default :func:`default_socket_path`). ``timeout``: seconds a send or a read may block
    (``None``: forever). ``use_numpy=False`` returns lists even when numpy is installed.

    Simple calls (:meth:`embed`, :meth:`health`, :meth:`info`, :meth:`status`) send one request and wait for
    its reply. For pipelining, :meth:`submit` sends embed requests without waiting and :meth:`result` collects
    any of them later: replies arrive in completion order, and those read while waiting for another are kept
    until asked for.
    """

    def __init__(self, path: Optional[str] = None, *, timeout: Optional[float] = 60.0, use_numpy: bool = True) -> None:
        self.path = path or default_socket_path()
        self._numpy = _np if use_numpy else None
        self._next_id = 1
        self._in_flight: Set[int] = set()
        self._replies: Dict[int, Dict[str, Any]] = {}
        self._sock: Optional[socket.socket] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(self.path)
        except BaseException:
            self._sock.close()
            raise

    # --- connection ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection (replies still in flight are lost). Safe to call twice."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pending(self) -> List[int]:
        """Ids of requests sent and not yet collected, in sending order."""
        return sorted(self._in_flight)

    # --- frames -------------------------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("the client is closed")
        return self._sock

    def _recv_exact(self, n: int) -> bytes:
        sock = self._socket()
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                self.close()
                raise ConnectionError("akidbd closed the connection")
            got += k
        return bytes(buf)

    def _send(self, request: Dict[str, Any]) -> int:
        request_id = self._next_id
        self._next_id += 1  # ids start at 1: the daemon uses id 0 for connection-level errors
        self._socket().sendall(encode_frame(request_id, request))
        self._in_flight.add(request_id)
        return request_id

    def _read_reply(self) -> Dict[str, Any]:
        (length,) = _LENGTH.unpack(self._recv_exact(4))
        reply = msgpack.unpackb(self._recv_exact(length), raw=False)
        if not isinstance(reply, dict):
            raise ValueError(f"reply is not a map: {type(reply).__name__}")
        return reply

    def _wait(self, request_id: int) -> Dict[str, Any]:
        """The reply to ``request_id``, raising :class:`AkidbError` on an error reply. Replies to other requests
        read meanwhile are kept for later."""
        if request_id not in self._in_flight:
            raise KeyError(f"no request {request_id} in flight on this connection")
        while request_id not in self._replies:
            reply = self._read_reply()
            reply_id = reply.get("id", 0)
            if reply_id in self._in_flight:
                self._replies[reply_id] = reply
            elif not reply.get("ok"):
                # id 0 (or an id we never sent): a connection-level error; the daemon closes the connection.
                raise reply_error(reply, reply_id)
            else:
                raise ValueError(f"reply to request {reply_id}, which is not in flight")
        self._in_flight.discard(request_id)
        reply = self._replies.pop(request_id)
        if not reply.get("ok"):
            raise reply_error(reply, request_id)
        return reply

    def _call(self, op: str) -> Dict[str, Any]:
        return self._wait(self._send({"op": op}))

    # --- vectors ------------------------------------------------------------------------------------------

    def _vectors(self, reply: Dict[str, Any]) -> Vectors:
        return decode_vectors(reply, self._numpy)

    # --- operations ---------------------------------------------------------------------------------------

    def submit(self, texts: Sequence[str], *, normalize: Optional[bool] = None, truncate: Optional[bool] = None,
               dimensions: Optional[int] = None, priority: Optional[str] = None,
               deadline_ms: Optional[int] = None, encoding: Optional[str] = None,
               prompt_name: Optional[str] = None, prompt: Optional[str] = None,
               model: Optional[str] = None, cache: Optional[bool] = None) -> int:
        """Sends an ``embed`` request without waiting for it; returns its id for :meth:`result`.

        Options as for :meth:`embed`. Many requests may be in flight on one connection.
        """
        return self._send(embed_request(texts, normalize=normalize, truncate=truncate, dimensions=dimensions,
                                        priority=priority, deadline_ms=deadline_ms, encoding=encoding,
                                        prompt_name=prompt_name, prompt=prompt, model=model, cache=cache))

    def result_reply(self, request_id: int) -> Dict[str, Any]:
        """The whole reply to a request sent with :meth:`submit`, its ``embeddings`` decoded as by :meth:`result`.

        Besides ``embeddings`` it has ``model``, ``dim``, ``count``, ``tokens``, ``truncated`` (indices of inputs
        that were cut) and ``timing_us`` (``queue``, ``inference``, ``total``).
        """
        reply = self._wait(request_id)
        reply["embeddings"] = self._vectors(reply)
        return reply

    def result(self, request_id: int) -> Vectors:
        """The vectors of a request sent with :meth:`submit`: an (n, dim) float32 array, or a list of lists.

        Blocks until that reply arrives, keeping replies to other requests read meanwhile. Raises
        :class:`AkidbError` if the daemon answered with an error, ``KeyError`` if the id is not in flight.
        """
        return self.result_reply(request_id)["embeddings"]

    def embed(self, texts: Sequence[str], *, normalize: Optional[bool] = None, truncate: Optional[bool] = None,
              dimensions: Optional[int] = None, priority: Optional[str] = None,
              deadline_ms: Optional[int] = None, encoding: Optional[str] = None,
              prompt_name: Optional[str] = None, prompt: Optional[str] = None,
              model: Optional[str] = None, cache: Optional[bool] = None) -> Vectors:
        """Embeds ``texts`` (a list of strings, at most ``info()["max_inputs"]``); returns one vector per text.

        - ``normalize``: L2-normalize (default: the model's setting, ``info()["normalize"]``).
        - ``truncate``: cut inputs over the model's max tokens (default True); False makes such an input an
          ``input_too_long`` error.
        - ``dimensions``: keep only the first N dimensions (1..=dim), normalized after the cut.
        - ``priority``: ``"realtime"``, ``"normal"`` (default) or ``"bulk"``.
        - ``deadline_ms``: answer ``deadline_exceeded`` if not done this many ms after the daemon reads it.
        - ``encoding``: how the vectors travel, ``"f32"`` (default, packed) or ``"array"``; the result is the same.
        - ``prompt_name``: one of the model's prompts (``info()["prompts"]``, e.g. ``"query"`` for
          Qwen3-Embedding) put before every text, as sentence-transformers' ``encode(prompt_name=...)`` does.
        - ``prompt``: a literal prompt instead (``""``: none, even where the model has a default prompt).
        - ``model``: the model, by name (default: the daemon's default model); another name is ``unknown_model``.
        - ``cache``: ``False`` bypasses the daemon's embedding cache (default: repeated texts come from it).

        Raises :class:`AkidbError` on an error reply.
        """
        return self.result(self.submit(texts, normalize=normalize, truncate=truncate, dimensions=dimensions,
                                       priority=priority, deadline_ms=deadline_ms, encoding=encoding,
                                       prompt_name=prompt_name, prompt=prompt, model=model, cache=cache))

    def rerank_reply(self, query: str, documents: Sequence[str], *, top_n: Optional[int] = None,
                     raw_scores: Optional[bool] = None, truncate: Optional[bool] = None,
                     priority: Optional[str] = None, deadline_ms: Optional[int] = None,
                     model: Optional[str] = None, cache: Optional[bool] = None) -> Dict[str, Any]:
        """The whole ``rerank`` reply: ``results`` (a list of ``{"index", "score"}``, best first), ``model``,
        ``tokens``, ``truncated`` and ``timing_us``."""
        return self._wait(self._send(rerank_request(query, documents, top_n=top_n, raw_scores=raw_scores,
                                                    truncate=truncate, priority=priority, deadline_ms=deadline_ms,
                                                    model=model, cache=cache)))

    def rerank(self, query: str, documents: Sequence[str], *, top_n: Optional[int] = None,
               raw_scores: Optional[bool] = None, truncate: Optional[bool] = None, priority: Optional[str] = None,
               deadline_ms: Optional[int] = None, model: Optional[str] = None,
               cache: Optional[bool] = None) -> List[Dict[str, Any]]:
        """Scores ``documents`` against ``query`` with a reranker (a cross-encoder served by the daemon); returns
        ``[{"index": i, "score": s}, ...]`` best first, as sentence-transformers' ``CrossEncoder.rank`` orders them.

        - ``top_n``: only the N best (default: all).
        - ``raw_scores``: the logits instead of the model's activation of them (sigmoid for most rerankers).
        - ``truncate``: cut over-long pairs, longest first (default True); False makes one ``input_too_long``.
        - ``priority``, ``deadline_ms``, ``cache``: as for :meth:`embed`.
        - ``model``: the reranker, by name (default: the first reranker the daemon serves).

        Raises :class:`AkidbError` on an error reply (``invalid_request`` for an embedding model).
        """
        reply = self.rerank_reply(query, documents, top_n=top_n, raw_scores=raw_scores, truncate=truncate,
                                  priority=priority, deadline_ms=deadline_ms, model=model, cache=cache)
        return [{"index": int(r["index"]), "score": float(r["score"])} for r in reply["results"]]

    def health(self) -> str:
        """``"starting"``, ``"ready"``, ``"degraded"`` or ``"stopping"``."""
        return str(self._call("health")["status"])

    def info(self) -> Dict[str, Any]:
        """Model and limits: ``model``, ``dim``, ``max_tokens``, ``pooling``, ``normalize``, ``max_inputs``,
        ``max_frame_bytes``, ``max_batch_tokens``, ``protocol``, ``version`` (plus ``v``, ``id``, ``ok``)."""
        return self._call("info")

    def status(self) -> Dict[str, Any]:
        """The operator's view: ``status``, ``devices``, ``queues``, ``counters``, ``latency_ms``,
        ``throughput``, ``thermal`` and more (see docs/PROTOCOL.md)."""
        return self._call("status")


from .aio import AsyncClient  # noqa: E402  (it builds on the helpers above)
