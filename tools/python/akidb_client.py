"""Python client for akidbd (protocol v1): length-prefixed MessagePack over a Unix socket.

    from akidb_client import Client
    with Client() as c:
        vectors = c.embed(["the robot picks up the red cup"], priority="realtime")

Needs the PyPI package ``msgpack``; returns numpy arrays when numpy is installed, else lists of floats.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Dict, List, Optional, Sequence

import msgpack

try:  # numpy is optional
    import numpy as _np
except ImportError:  # pragma: no cover - exercised with --no-numpy
    _np = None

__all__ = ["Client", "AkidbError", "default_socket_path"]


class AkidbError(Exception):
    """The daemon answered with an error reply (``code`` is one of the protocol's error codes)."""

    def __init__(self, code: str, message: str, request_id: int = 0):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


def default_socket_path() -> str:
    """The daemon's default: ``$XDG_RUNTIME_DIR/akidb/embed.sock``, else ``/tmp/akidb-<uid>/embed.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "akidb", "embed.sock")
    return f"/tmp/akidb-{os.getuid()}/embed.sock"


class Client:
    """One connection to akidbd. Not thread-safe: use one client per thread."""

    def __init__(self, path: Optional[str] = None, *, timeout: Optional[float] = 60.0, use_numpy: bool = True):
        self.path = path or default_socket_path()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(self.path)
        self._next_id = 1
        self._pending: Dict[int, Dict[str, Any]] = {}
        self._numpy = _np if use_numpy else None

    # --- plumbing -------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        chunks, remaining = [], n
        while remaining:
            chunk = self._sock.recv(remaining)
            if not chunk:
                raise ConnectionError("akidbd closed the connection")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _send(self, request: Dict[str, Any]) -> int:
        request_id = self._next_id
        self._next_id += 1
        body = msgpack.packb({"v": 1, "id": request_id, **request}, use_bin_type=True)
        self._sock.sendall(struct.pack(">I", len(body)) + body)
        return request_id

    def _read_reply(self) -> Dict[str, Any]:
        (length,) = struct.unpack(">I", self._recv_exact(4))
        return msgpack.unpackb(self._recv_exact(length), raw=False)

    def _wait(self, request_id: int) -> Dict[str, Any]:
        """The reply to ``request_id``; replies to other requests in flight are kept for later."""
        while request_id not in self._pending:
            reply = self._read_reply()
            self._pending[reply.get("id", 0)] = reply
        reply = self._pending.pop(request_id)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise AkidbError(error.get("code", "unknown"), error.get("message", ""), request_id)
        return reply

    def _vectors(self, reply: Dict[str, Any]):
        count, dim, data = reply["count"], reply["dim"], reply["embeddings"]
        if isinstance(data, (bytes, bytearray)):
            if self._numpy is not None:
                return self._numpy.frombuffer(data, dtype="<f4").reshape(count, dim).copy()
            floats = struct.unpack(f"<{count * dim}f", data)
            return [list(floats[i * dim:(i + 1) * dim]) for i in range(count)]
        return self._numpy.asarray(data, dtype="float32") if self._numpy is not None else data

    # --- operations -----------------------------------------------------------------------------------------

    def submit(self, texts: Sequence[str], *, normalize: Optional[bool] = None, truncate: Optional[bool] = None,
               dimensions: Optional[int] = None, priority: Optional[str] = None,
               deadline_ms: Optional[int] = None) -> int:
        """Sends an embed request without waiting (pipelining); returns its id for :meth:`result`."""
        request: Dict[str, Any] = {"op": "embed", "inputs": list(texts)}
        for key, value in (("normalize", normalize), ("truncate", truncate), ("dimensions", dimensions),
                           ("priority", priority), ("deadline_ms", deadline_ms)):
            if value is not None:
                request[key] = value
        return self._send(request)

    def result(self, request_id: int):
        """The vectors of a request sent with :meth:`submit` (an (n, dim) float32 array, or lists)."""
        return self._vectors(self._wait(request_id))

    def embed(self, texts: Sequence[str], **options: Any):
        """Embeds ``texts``. Options: normalize, truncate, dimensions, priority ("realtime" | "normal" | "bulk"),
        deadline_ms. Raises :class:`AkidbError` on an error reply."""
        return self.result(self.submit(texts, **options))

    def health(self) -> str:
        """"starting" | "ready" | "degraded" | "stopping"."""
        return self._wait(self._send({"op": "health"}))["status"]

    def info(self) -> Dict[str, Any]:
        """Model and limits."""
        return self._wait(self._send({"op": "info"}))

    def status(self) -> Dict[str, Any]:
        """The operator's view: devices, queues, counters, latency, thermal state."""
        return self._wait(self._send({"op": "status"}))
