"""Non-streaming upstream calls on our own HTTP/1.1 client: asyncio + httptools.

aiohttp's client costs about 190 µs of CPU per call on the benchmark machine (its
request, response and payload objects, a writer task per request, its timer context);
this client about 50: a call is one write of the head and body, httptools parses the
answer (the parser uvicorn uses for the other side), and a future resolves when the
message is complete. Streams stay on aiohttp (`stream` delegates): their per-chunk
work, flow control and early close are where its machinery earns its keep.

The semantics are `AiohttpUpstream.send`'s: connections pooled per origin and kept
alive (dropped after `KEEPALIVE_S` idle, or when the upstream closes them), no
redirects followed, no cookies kept, `Timeouts` per call (`connect_s`; `read_s` for
the first byte and every gap; `total_s` for the whole call), gzip and deflate bodies
decoded, and every failure an `UpstreamTimeoutError` or `UpstreamUnavailableError`
(`during_connect` when no byte of an answer came: a refused connect, or a pooled
connection the upstream had closed).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import zlib
from collections import deque
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import ProviderError, UpstreamUnavailableError
from gateway.upstream import (
    AiohttpUpstream,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
    _mapped,
)

KEEPALIVE_S = 15.0  # as aiohttp's default: idle connections live as long under both
MAX_IDLE_PER_ORIGIN = 1024


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    host_header: str


class Target(NamedTuple):
    origin: Origin
    path: str  # with the query


@functools.lru_cache(maxsize=1024)  # URLs come from config: a few per deployment
def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamUnavailableError(f"Unsupported upstream URL scheme {parts.scheme!r}.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if default else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(Origin(parts.scheme, host, port, host_header), path)


class _Exchange(asyncio.Protocol):
    """One kept-alive connection: one request at a time, its answer parsed by httptools."""

    def __init__(self, pool: ConnectionPool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._started = False  # a byte of the answer came
        self._headers_done = False
        self._last_read = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_s = 0.0
        self._sized = False  # content-length or chunked: it ends by itself, not by close

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            self._close()  # bytes nobody asked for: the connection is out of step
            return
        self._started = True
        self._last_read = asyncio.get_running_loop().time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamUnavailableError("The upstream sent a malformed HTTP answer."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.transport = True, None
        if self._answer is not None and not self._answer.done():
            if self._headers_done and not self._sized:
                self._finish()  # a body that ends when the connection does
            else:
                self._fail(self._lost_error())
        self._cancel_timers()

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        names = {name.lower() for name, _ in self._headers}
        self._sized = "content-length" in names or "transfer-encoding" in names

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        keep = self._parser.should_keep_alive()
        self._finish()
        if keep:
            self._pool.release(self)
        else:
            self._close()

    # -- one call -----------------------------------------------------------------------
    async def call(self, head: bytes, body: bytes | None, read_s: float) -> UpstreamResponse:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._read_s, self._last_read = read_s, loop.time()
        self._read_timer = loop.call_at(self._last_read + read_s, self._check_read)
        self.transport.write(head + body if body else head)
        try:
            return await self._answer
        except BaseException:
            self._close()  # given up (timeout, cancel) or failed: the connection is spent
            raise

    def _check_read(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._last_read + self._read_s
        if loop.time() < due:  # bytes came since: check again when this gap would end
            self._read_timer = loop.call_at(due, self._check_read)
            return
        self._read_timer = None
        self._fail(TimeoutError())

    def _finish(self) -> None:
        answer = self._answer
        if answer is None:
            return
        status = self._parser.get_status_code()
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        body = b"".join(self._body)
        self._reset()
        if answer.done():
            return
        try:
            body = _decoded(body, headers.get("content-encoding", ""))
        except zlib.error:
            answer.set_exception(UpstreamUnavailableError("The upstream sent a corrupt body."))
            return
        answer.set_result(UpstreamResponse(status, headers, body))

    def _fail(self, error: BaseException) -> None:
        answer = self._answer
        self._reset()
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self._close()

    def _lost_error(self) -> ProviderError:
        # Nothing of an answer came: the upstream closed a pooled connection, or refused
        # the request at once. Either way no work started there: safe to retry.
        return _mapped(ConnectionResetError(), connecting=not self._started)

    def _reset(self) -> None:
        self._answer, self._headers, self._body = None, [], []
        self._started = self._headers_done = self._sized = False
        self._parser = httptools.HttpResponseParser(self)
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._read_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self._read_timer = self.idle_timer = None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


def _decoded(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
    raise UpstreamUnavailableError(f"The upstream sent an unsupported encoding {encoding!r}.")


class ConnectionPool:
    """Idle kept-alive connections per origin, newest first (the likeliest still open)."""

    def __init__(self) -> None:
        self._idle: dict[Origin, deque[_Exchange]] = {}
        self._tls: ssl.SSLContext | None = None

    def idle(self, origin: Origin) -> _Exchange | None:
        connections = self._idle.get(origin)
        while connections:
            exchange = connections.pop()
            if exchange.idle_timer is not None:
                exchange.idle_timer.cancel()
                exchange.idle_timer = None
            if not exchange.closed and exchange.transport is not None:
                return exchange
        return None

    def release(self, exchange: _Exchange) -> None:
        connections = self._idle.setdefault(exchange.origin, deque())
        if exchange.closed or len(connections) >= MAX_IDLE_PER_ORIGIN:
            exchange._close()
            return
        loop = asyncio.get_running_loop()
        exchange.idle_timer = loop.call_later(KEEPALIVE_S, self._expire, exchange)
        connections.append(exchange)

    def _expire(self, exchange: _Exchange) -> None:
        exchange.idle_timer = None
        connections = self._idle.get(exchange.origin)
        if connections is not None and exchange in connections:
            connections.remove(exchange)
        exchange._close()

    async def connect(self, origin: Origin, connect_s: float) -> _Exchange:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.scheme == "https" else None
        async with asyncio.timeout(connect_s):
            _, exchange = await loop.create_connection(
                lambda: _Exchange(self, origin),
                origin.host,
                origin.port,
                ssl=tls,
                server_hostname=origin.host if tls is not None else None,
            )
        return exchange

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def close(self) -> None:
        for connections in self._idle.values():
            for exchange in connections:
                exchange._cancel_timers()
                exchange._close()
        self._idle.clear()


class NativeUpstream:
    """`send` on this module's client; `stream` on aiohttp (one session for both uses)."""

    def __init__(self, streams: AiohttpUpstream | None = None) -> None:
        self._pool = ConnectionPool()
        self._streams = streams or AiohttpUpstream()

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        target = parse_target(req.url)
        head = _head(req, target)
        t = req.timeouts
        try:
            async with asyncio.timeout(t.total_s):
                exchange = self._pool.idle(target.origin)
                if exchange is None:
                    exchange = await self._connect(target.origin, t.connect_s)
                return await exchange.call(head, req.body, t.read_s)
        except ProviderError:
            raise
        except (TimeoutError, OSError) as exc:
            raise _mapped(exc) from None

    async def _connect(self, origin: Origin, connect_s: float) -> _Exchange:
        try:
            return await self._pool.connect(origin, connect_s)
        except (TimeoutError, OSError) as exc:
            raise _mapped(exc, connecting=True) from None

    def stream(self, req: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamStream]:
        return self._streams.stream(req)

    async def aclose(self) -> None:
        self._pool.close()
        await self._streams.aclose()


def _head(req: UpstreamRequest, target: Target) -> bytes:
    lines = [f"{req.method} {target.path} HTTP/1.1", f"host: {target.origin.host_header}"]
    for name, value in req.headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise UpstreamUnavailableError("A header for the upstream holds a line break.")
        if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
            lines.append(f"{name}: {value}")
    if req.body is not None or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(req.body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()  # UTF-8, as aiohttp sends them
