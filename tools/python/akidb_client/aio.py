"""The asyncio client: the operations of :class:`akidb_client.Client` as coroutines, pipelined on one connection.

::

    import asyncio
    from akidb_client import AsyncClient

    async def main():
        async with await AsyncClient.connect() as client:
            a, b = await asyncio.gather(client.embed(["obstacle ahead"], priority="realtime"),
                                        client.embed(["clear path"]))

Any number of calls may be awaited at once on one client: each sends its request at once and waits for its own
reply, which a single reader task hands over by request id (replies arrive in completion order).
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence

import msgpack

from . import (
    _LENGTH,
    Vectors,
    _np,
    decode_vectors,
    default_socket_path,
    embed_request,
    encode_frame,
    reply_error,
    rerank_request,
)

__all__ = ["AsyncClient"]


class AsyncClient:
    """One connection to akidbd for asyncio code. Create it with ``await AsyncClient.connect(path)``.

    ``timeout``: seconds one call may wait for its reply (``None``: forever); a call that times out raises
    ``asyncio.TimeoutError`` and its late reply is discarded. ``use_numpy=False`` returns lists even when numpy is
    installed. Safe to share between the tasks of one event loop.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, path: str,
                 timeout: Optional[float] = 60.0, use_numpy: bool = True) -> None:
        self.path = path
        self.timeout = timeout
        self._numpy = _np if use_numpy else None
        self._reader = reader
        self._writer = writer
        self._next_id = 1
        self._waiting: Dict[int, "asyncio.Future[Dict[str, Any]]"] = {}
        self._closed: Optional[BaseException] = None
        self._reader_task = asyncio.ensure_future(self._read_replies())

    @classmethod
    async def connect(cls, path: Optional[str] = None, *, timeout: Optional[float] = 60.0,
                      use_numpy: bool = True) -> "AsyncClient":
        """Connects to the daemon's socket (default :func:`akidb_client.default_socket_path`)."""
        path = path or default_socket_path()
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer, path=path, timeout=timeout, use_numpy=use_numpy)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection; calls still waiting raise ``ConnectionError``. Safe to call twice."""
        self._fail_all(ConnectionError("the client is closed"))
        self._reader_task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    # --- frames -------------------------------------------------------------------------------------------

    def _fail_all(self, error: BaseException) -> None:
        if self._closed is None:
            self._closed = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    async def _read_replies(self) -> None:
        try:
            while True:
                (length,) = _LENGTH.unpack(await self._reader.readexactly(4))
                reply = msgpack.unpackb(await self._reader.readexactly(length), raw=False)
                if not isinstance(reply, dict):
                    raise ValueError(f"reply is not a map: {type(reply).__name__}")
                reply_id = reply.get("id", 0)
                future = self._waiting.pop(reply_id, None)
                if future is not None:
                    if not future.done():
                        future.set_result(reply)
                elif not reply.get("ok") and reply_id == 0:
                    # A connection-level error (frame_too_large, permission_denied): the daemon closes.
                    self._fail_all(reply_error(reply, 0))
                    return
                # Else: the reply to a call that timed out; nobody waits for it.
        except asyncio.IncompleteReadError:
            self._fail_all(ConnectionError("akidbd closed the connection"))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure ends the connection for every waiting call
            self._fail_all(err)

    async def _call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if self._closed is not None:
            raise ConnectionError(f"the connection is closed ({self._closed})")
        request_id = self._next_id
        self._next_id += 1  # ids start at 1: the daemon uses id 0 for connection-level errors
        future: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            # One write per frame: frames of concurrent calls never interleave.
            self._writer.write(encode_frame(request_id, request))
            await self._writer.drain()
            reply = await asyncio.wait_for(future, self.timeout)
        finally:
            self._waiting.pop(request_id, None)
        if not reply.get("ok"):
            raise reply_error(reply, request_id)
        return reply

    # --- operations ---------------------------------------------------------------------------------------

    async def embed_reply(self, texts: Sequence[str], *, normalize: Optional[bool] = None,
                          truncate: Optional[bool] = None, dimensions: Optional[int] = None,
                          priority: Optional[str] = None, deadline_ms: Optional[int] = None,
                          encoding: Optional[str] = None, prompt_name: Optional[str] = None,
                          prompt: Optional[str] = None, model: Optional[str] = None,
                          cache: Optional[bool] = None) -> Dict[str, Any]:
        """The whole ``embed`` reply (``model``, ``dim``, ``tokens``, ``truncated``, ``timing_us``), its
        ``embeddings`` decoded as by :meth:`embed`."""
        reply = await self._call(embed_request(texts, normalize=normalize, truncate=truncate, dimensions=dimensions,
                                               priority=priority, deadline_ms=deadline_ms, encoding=encoding,
                                               prompt_name=prompt_name, prompt=prompt, model=model, cache=cache))
        reply["embeddings"] = decode_vectors(reply, self._numpy)
        return reply

    async def embed(self, texts: Sequence[str], **options: Any) -> Vectors:
        """Embeds ``texts``; options and result as :meth:`akidb_client.Client.embed`. Raises
        :class:`akidb_client.AkidbError` on an error reply."""
        return (await self.embed_reply(texts, **options))["embeddings"]

    async def rerank_reply(self, query: str, documents: Sequence[str], **options: Any) -> Dict[str, Any]:
        """The whole ``rerank`` reply (``results``, ``model``, ``tokens``, ``truncated``, ``timing_us``)."""
        return await self._call(rerank_request(query, documents, **options))

    async def rerank(self, query: str, documents: Sequence[str], **options: Any) -> List[Dict[str, Any]]:
        """Scores ``documents`` against ``query``; options and result as :meth:`akidb_client.Client.rerank`."""
        reply = await self.rerank_reply(query, documents, **options)
        return [{"index": int(r["index"]), "score": float(r["score"])} for r in reply["results"]]

    async def health(self) -> str:
        """``"starting"``, ``"ready"``, ``"degraded"`` or ``"stopping"``."""
        return str((await self._call({"op": "health"}))["status"])

    async def info(self) -> Dict[str, Any]:
        """Model and limits (``model``, ``dim``, ``max_tokens``, ``prompts``, ``max_inputs``, ...)."""
        return await self._call({"op": "info"})

    async def status(self) -> Dict[str, Any]:
        """The operator's view: devices, queues, counters, latency, throughput, thermal state."""
        return await self._call({"op": "status"})
