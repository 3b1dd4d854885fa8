"""Upstream calls and streams on our own HTTP/1.1 client: asyncio + httptools.

aiohttp's client costs about 190 µs of CPU per call on the benchmark machine (its
request, response and payload objects, a writer task per request, its timer context);
this client about 50: a request is one write of the head and body, httptools parses
the answer (the parser uvicorn uses for the other side), and the caller waits on one
future for the head and one per read of the body.

The semantics are `AiohttpUpstream`'s: connections pooled per origin and kept alive
(dropped after `KEEPALIVE_S` idle, or when the upstream closes them), no redirects
followed, no cookies kept, `Timeouts` per request (`connect_s`; `read_s` for the first
byte and every gap; `total_s` for a whole non-streaming call), gzip and deflate bodies
decoded, a stream closed early drops its connection (which is what stops the upstream
generating), reading pauses while a stream's consumer is behind, and every failure is
an `UpstreamTimeoutError` or `UpstreamUnavailableError` (`during_connect` when no byte
of an answer came: a refused connect, or a pooled connection the upstream had closed).

Outbound proxies (gateway.transport.proxy): an https:// upstream through a CONNECT
tunnel, TLS inside it with the origin's name; an http:// one in absolute form to the
proxy. The route (origin and proxy) is decided once per URL and provider override, and
connections are pooled per route, so keep-alive holds through a proxy. A proxy that
refuses (a non-2xx to CONNECT, a 407) is an `UpstreamUnavailableError` `during_connect`.
"""

from __future__ import annotations

import asyncio
import functools
import math
import ssl
import zlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple, TypeAlias
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import ProxySettings
from gateway.errors import ProviderError, UpstreamUnavailableError
from gateway.transport.base import (
    LineBatches,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)
from gateway.transport.errors import TRANSPORT_ERRORS, mapped
from gateway.transport.proxy import Proxy, ProxyChooser, TunnelAnswer, connect_head, proxy_refused

KEEPALIVE_S = 15.0  # as aiohttp's default: idle connections live as long under both
MAX_IDLE_PER_ORIGIN = 1024
PAUSE_AT_BYTES = 256 * 1024  # a stream's unread body past this: stop reading the socket
MAX_ROUTES = 4096  # (URL, proxy override) pairs: URLs come from config


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    host_header: str


PoolKey: TypeAlias = Origin | tuple[Proxy, Origin]


class Target(NamedTuple):
    origin: Origin
    path: str  # with the query; through a proxy to an http:// upstream, the whole URL
    key: PoolKey  # its connections' pool: the origin, or (proxy, origin)
    proxy: Proxy | None = None


@functools.lru_cache(maxsize=1024)  # URLs come from config: a few per deployment
def parse_target(url: str) -> Target:
    """Direct: with no proxy (`NativeUpstream._route` adds one)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamUnavailableError(f"Unsupported upstream URL scheme {parts.scheme!r}.")
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    origin = Origin(parts.scheme, host, port, host_header)
    return Target(origin, path, origin)


class Reply:
    """One answer as it arrives: its head, the body read so far, its end or its failure."""

    def __init__(self, exchange: _Exchange, loop: asyncio.AbstractEventLoop) -> None:
        self._exchange = exchange
        self._loop = loop
        self.head: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.ended = False
        self.error: BaseException | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None

    # -- the connection's side ----------------------------------------------------------
    def headers_done(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, CIMultiDictProxy(CIMultiDict(headers))
        self._decoder = _decoder(self.headers.get("content-encoding", ""))
        if not self.head.done():
            self.head.set_result(None)

    def body(self, data: bytes) -> int:
        """Keeps `data`; returns how much is unread."""
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        return self._size

    def end(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self.ended or self.error is not None:
            return
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a caller that gave up never will
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the caller's side --------------------------------------------------------------
    async def read(self) -> bytes:
        """What arrived since the last read (decoded); b"" at the end. Raises the failure."""
        while not self._chunks and not self.ended:
            if self.error is not None:
                raise self.error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._chunks:
            return b""  # the end
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._exchange.drained()
        if self._decoder is None:
            return data
        try:  # with no max_length, decompress returns all it can: nothing is left to flush
            return self._decoder.decompress(data)
        except zlib.error:
            raise UpstreamUnavailableError("The upstream sent a corrupt body.") from None

    async def read_all(self) -> bytes:
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _decoder(encoding: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or a zlib header
    raise UpstreamUnavailableError(f"The upstream sent an unsupported encoding {encoding!r}.")


class _Exchange(asyncio.Protocol):
    """One kept-alive connection: one request at a time, its answer parsed by httptools."""

    def __init__(self, pool: ConnectionPool, target: Target) -> None:
        self._pool = pool
        self.key = target.key
        # Through a proxy in absolute form: a 407 is the proxy's, not the upstream's.
        self._via_proxy = target.proxy is not None and target.origin.scheme == "http"
        # Made in the loop's connect: kept, as asyncio.get_running_loop() costs a
        # getpid() system call on each call in Python 3.11 (its fork check).
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0  # loop time it went back to the pool
        self._parser = httptools.HttpResponseParser(self)
        self._reply: Reply | None = None
        self._headers: list[tuple[str, str]] = []
        self._started = False  # a byte of the answer came
        self._sized = False  # content-length or chunked: it ends by itself, not by close
        self._keep_alive = False
        self._paused = False
        self._last_read = 0.0
        self._read_s = 0.0
        self._total_due = math.inf
        self._read_timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reply = self._reply
        if reply is None or reply.ended:
            self._close()  # bytes nobody asked for: the connection is out of step
            return
        self._started = True
        self._last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamUnavailableError("The upstream sent a malformed HTTP answer."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_timers()
        # The parser holds this protocol's callbacks: a cycle that only the cycle
        # collector would free, and with the collector tuned to run rarely (app.tune_gc)
        # a thousand closed connections were a megabyte or two that stayed for minutes.
        del self._parser
        reply = self._reply
        if reply is None or reply.ended:
            return
        if reply.head.done() and not self._sized:
            reply.end()  # a body that ends when the connection does
            return
        # Nothing of an answer came: the upstream closed a pooled connection, or refused
        # the request at once. Either way no work started there: safe to retry.
        reply.fail(mapped(ConnectionResetError(), connecting=not self._started))

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        names = {name.lower() for name, _ in self._headers}
        self._sized = "content-length" in names or "transfer-encoding" in names
        assert self._reply is not None
        status = self._parser.get_status_code()
        if status == 407 and self._via_proxy:
            self._fail(proxy_refused(status))
            return
        try:
            self._reply.headers_done(status, self._headers)
        except ProviderError as error:  # an encoding we cannot decode
            self._fail(error)

    def on_body(self, body: bytes) -> None:
        assert self._reply is not None
        if self._reply.body(body) > PAUSE_AT_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        assert self._reply is not None
        self._reply.end()

    # -- the caller's side --------------------------------------------------------------
    def start(self, head: bytes, body: bytes | None, read_s: float, total_s: float) -> Reply:
        """Sends the request. One timer bounds the answer: its first byte and every gap
        (`read_s`), and the whole of it (`total_s`, infinite for a stream). The timer
        outlives the answer (a timer made and cancelled per call costs more than one
        that comes due idle now and then): one still due before this answer's
        deadline stays, and when due, checks what is in flight then."""
        assert self.transport is not None
        loop = self.loop
        self._reply = reply = Reply(self, loop)
        self._read_s, self._last_read = read_s, loop.time()
        self._total_due = self._last_read + total_s
        due = min(self._last_read + read_s, self._total_due)
        timer = self._read_timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._read_timer = loop.call_at(due, self._check_read)
        self.transport.write(head + body if body else head)
        return reply

    def drained(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self.loop.time()  # the gap was ours
            self.transport.resume_reading()

    def finish(self) -> None:
        """The caller is done: pooled again if its answer came whole, else closed (for a
        stream left early, that is what stops the upstream)."""
        reply, self._reply = self._reply, None
        if reply is not None and reply.ended and self._keep_alive and not self.closed:
            self._headers, self._started, self._sized, self._keep_alive = [], False, False, False
            self._parser = httptools.HttpResponseParser(self)
            self._pool.release(self)
        else:
            self._close()

    def _check_read(self) -> None:
        self._read_timer = None
        reply = self._reply
        if reply is None or reply.ended or self.transport is None:
            return  # idle in the pool, or the answer is in: nothing to time
        loop = self.loop
        now, due = loop.time(), self._last_read + self._read_s
        if now < self._total_due and (self._paused or now < due):  # read since, or paused
            due = min(max(due, now + 0.05), self._total_due)  # by us: not idle
            self._read_timer = loop.call_at(due, self._check_read)
            return
        self._fail(TimeoutError())

    def _fail(self, error: BaseException) -> None:
        if self._reply is not None:
            self._reply.fail(error)
        self._close()

    def _stop_timers(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Idle kept-alive connections per origin, oldest first: reused newest first (the
    likeliest still open), dropped oldest first once idle for `KEEPALIVE_S`. One timer
    for the whole pool, due when the oldest idle connection expires, instead of one
    per connection returned (a timer is a few microseconds on every request). Through a
    proxy, connections are pooled per (proxy, origin)."""

    def __init__(self) -> None:
        self._idle: defaultdict[PoolKey, deque[_Exchange]] = defaultdict(deque)
        self._tls: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None

    def idle(self, key: PoolKey) -> _Exchange | None:
        connections = self._idle.get(key)
        while connections:
            exchange = connections.pop()
            if not exchange.closed:
                return exchange
        return None

    def release(self, exchange: _Exchange) -> None:
        connections = self._idle[exchange.key]  # not setdefault: a deque per call
        if len(connections) >= MAX_IDLE_PER_ORIGIN:
            exchange._close()
            return
        loop = exchange.loop
        exchange.idle_since = loop.time()
        connections.append(exchange)
        if self._sweep is None:
            self._sweep = loop.call_at(exchange.idle_since + KEEPALIVE_S, self._expire)

    def _expire(self) -> None:
        """Drops every connection idle for `KEEPALIVE_S`; due again for the next one."""
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - KEEPALIVE_S
        next_since = math.inf
        for connections in self._idle.values():
            while connections and connections[0].idle_since <= cutoff:
                connections.popleft()._close()
            if connections:
                next_since = min(next_since, connections[0].idle_since)
        self._sweep = None
        if next_since < math.inf:
            self._sweep = loop.call_at(next_since + KEEPALIVE_S, self._expire)

    async def connect(self, target: Target, connect_s: float) -> _Exchange:
        """To the origin, or its proxy; `connect_s` bounds it all (a tunnel's CONNECT and
        TLS handshake included)."""
        loop = asyncio.get_running_loop()
        origin, proxy = target.origin, target.proxy
        tls = self._tls_context() if origin.scheme == "https" else None
        with _mapped_errors(connecting=True):
            async with asyncio.timeout(connect_s):
                if proxy is not None and tls is not None:
                    return await self._tunnel(target, proxy, tls)
                _, exchange = await loop.create_connection(
                    lambda: _Exchange(self, target),
                    origin.host if proxy is None else proxy.host,
                    origin.port if proxy is None else proxy.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
        return exchange

    async def _tunnel(self, target: Target, proxy: Proxy, tls: ssl.SSLContext) -> _Exchange:
        """A CONNECT tunnel through `proxy`, then TLS inside it with the origin's name
        (its SNI, and the name its certificate must carry)."""
        loop = asyncio.get_running_loop()
        origin = target.origin
        raw, answer = await loop.create_connection(
            lambda: TunnelAnswer(loop), proxy.host, proxy.port
        )
        try:
            raw.write(connect_head(origin.host, origin.port, proxy))
            await answer.done
            exchange = _Exchange(self, target)
            transport = await loop.start_tls(raw, exchange, tls, server_hostname=origin.host)
            if transport is None:  # the tunnel closed meanwhile
                raise ConnectionResetError()
        except BaseException:
            raw.close()
            raise
        exchange.connection_made(transport)
        return exchange

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connections in self._idle.values():
            for exchange in connections:
                exchange._close()
        self._idle.clear()


class NativeStream:
    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self.status = reply.status
        self.headers: Mapping[str, str] = reply.headers

    async def read_all(self) -> bytes:
        with _mapped_errors():
            return await self._reply.read_all()

    def line_batches(self) -> AsyncIterator[list[bytes]]:
        """The lines completed by each read, together (see `AiohttpStream.line_batches`)."""
        return LineBatches(self._reply.read, TRANSPORT_ERRORS)


class NativeUpstream:
    """`proxies`: the environment's (gateway.config.environment_proxies); none if None."""

    def __init__(self, proxies: ProxySettings | None = None) -> None:
        self._pool = ConnectionPool()
        self._proxies = ProxyChooser(proxies)
        self._routes: dict[tuple[str, str | None], Target] = {}

    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        exchange, reply = await self._start(req, req.timeouts.total_s, within_s)
        try:
            await reply.head
            body = await reply.read_all()
        except TRANSPORT_ERRORS as exc:  # mapped inline: on every call
            raise mapped(exc) from None
        finally:
            exchange.finish()
        return UpstreamResponse(reply.status, reply.headers, body)

    def stream(self, req: UpstreamRequest) -> _OpenedStream:
        """No total deadline: a stream may run long; `read_s` bounds its first byte and
        every gap."""
        return _OpenedStream(self, req)

    async def _start(
        self, req: UpstreamRequest, total_s: float, within_s: float
    ) -> tuple[_Exchange, Reply]:
        """`total_s` counts from the send; `within_s`, the caller's deadline, from now:
        a connect spends from it. The exchange's one timer enforces both."""
        target = self._routes.get((req.url, req.proxy)) or self._route(req.url, req.proxy)
        head = _head(req, target)
        t = req.timeouts
        exchange = self._pool.idle(target.key)
        if exchange is None:
            loop = asyncio.get_running_loop()
            started = loop.time()
            exchange = await self._pool.connect(target, min(t.connect_s, within_s))
            within_s -= loop.time() - started
        return exchange, exchange.start(head, req.body, t.read_s, min(total_s, within_s))

    def _route(self, url: str, override: str | None) -> Target:
        """The target of `url`, through the proxy the environment or the provider's
        `override` gives its origin (if any): decided once, then looked up."""
        target = parse_target(url)
        origin = target.origin
        proxy = self._proxies.choose(origin.scheme, origin.host, origin.port, override)
        if proxy is not None:
            path = target.path
            if origin.scheme == "http":  # absolute form: the proxy forwards it
                path = f"http://{origin.host_header}{path}"
            target = Target(origin, path, (proxy, origin), proxy)
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        self._routes[(url, override)] = target
        return target

    async def aclose(self) -> None:
        self._pool.close()


class _OpenedStream:
    """`NativeUpstream.stream`'s context manager. A class rather than
    @asynccontextmanager: that is an async generator per stream, which the event loop
    hooks and tracks, and a wrapper object around it."""

    __slots__ = ("_upstream", "_req", "_exchange")

    def __init__(self, upstream: NativeUpstream, req: UpstreamRequest) -> None:
        self._upstream = upstream
        self._req = req
        self._exchange: _Exchange | None = None

    async def __aenter__(self) -> UpstreamStream:
        exchange, reply = await self._upstream._start(self._req, math.inf, math.inf)
        self._exchange = exchange
        try:
            with _mapped_errors():
                await reply.head
        except BaseException:
            exchange.finish()
            raise
        return NativeStream(reply)

    async def __aexit__(self, *exc_info: object) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:  # once: a second finish would close a pooled connection
            exchange.finish()


def _head(req: UpstreamRequest, target: Target) -> bytes:
    head = _head_lines(req.method, target, tuple(req.headers.items()))
    if req.body is not None or req.method in ("POST", "PUT", "PATCH"):
        return b"%scontent-length: %d\r\n\r\n" % (head, len(req.body or b""))
    return head + b"\r\n"


# A deployment sends the same headers on every call: its head, but for the length,
# is built and checked once (the key includes every header: a changed one is new).
@functools.lru_cache(maxsize=256)
def _head_lines(method: str, target: Target, headers: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1", f"host: {target.origin.host_header}"]
    proxy = target.proxy
    if proxy is not None and proxy.authorization and target.origin.scheme == "http":
        lines.append(f"proxy-authorization: {proxy.authorization}")  # absolute form
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise UpstreamUnavailableError("A header for the upstream holds a line break.")
        if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode()  # UTF-8, as aiohttp sends them


@contextmanager
def _mapped_errors(connecting: bool = False) -> Iterator[None]:
    """This transport's failures (the socket's, the TLS layer's, timeouts) as provider
    errors; `connecting`: before any response arrived."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise mapped(exc, connecting) from None
