"""The upstream transport seam: adapters build `UpstreamRequest`s, a transport sends them.

The native client (`upstream_native.py`) runs the hot path by default; aiohttp and
httpx stay selectable (`server.upstream_transport`) to measure against. Every
transport exception becomes an `UpstreamTimeoutError` or `UpstreamUnavailableError`
here, including during stream iteration, so nothing above this module knows which
HTTP library is in use. Redirects are never followed (rule 10).
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from gateway.errors import ProviderError, UpstreamTimeoutError, UpstreamUnavailableError

MAX_LINE_BYTES = 8 * 1024 * 1024  # one stream line (an SSE field); a bound, not a real size


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0  # also the first-byte and idle timeout of a stream
    total_s: float = 600.0  # whole non-streaming call


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Already provider-shaped. `headers` hold the provider key: never log them."""

    url: str
    headers: Mapping[str, str]
    body: bytes | None
    method: str = "POST"
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamStream(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read_all(self) -> bytes: ...

    def line_batches(self) -> AsyncIterator[list[bytes]]:
        """Complete lines (with their `\n`), grouped as they arrived: one list per read."""
        ...


class Upstream(Protocol):
    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        """The whole answer. `within_s`: the caller's own deadline (the request's, in
        seconds from now), connecting included; past it, `UpstreamTimeoutError`. The
        transport's timers enforce it: no timeout context per call on the hot path."""
        ...

    def stream(self, req: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamStream]: ...

    async def aclose(self) -> None: ...


class AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read_all(self) -> bytes:
        with _mapped_errors():
            return await self._response.read()

    def line_batches(self) -> AsyncIterator[list[bytes]]:
        """The lines completed by each network read, together.

        (`readline` scans and waits once per line, two per SSE event: the largest
        per-chunk cost of a relayed stream in the benchmark. A batch also lets the
        relay send what arrived together in one write.)
        """
        return LineBatches(self._response.content.readany, _TRANSPORT_ERRORS)


class LineBatches:
    """The lines completed by each `read()` (b"" at the end), grouped as they came; a
    line split over many reads is joined once, when it ends, so a long line costs
    linear time. `errors` from `read` become provider errors.

    An iterator class, not an async generator: the event loop hooks and tracks every
    async generator (a weak set entry, a finalizer), a cost per stream."""

    __slots__ = ("_read", "_errors", "_splitter", "_ended")

    def __init__(
        self, read: Callable[[], Awaitable[bytes]], errors: tuple[type[BaseException], ...]
    ) -> None:
        self._read = read
        self._errors = errors
        self._splitter = LineSplitter()
        self._ended = False

    def __aiter__(self) -> LineBatches:
        return self

    async def __anext__(self) -> list[bytes]:
        while not self._ended:
            try:  # not `_mapped_errors()`: a context manager per read is a per-chunk cost
                data = await self._read()
            except self._errors as exc:
                raise _mapped(exc) from None
            if not data:
                self._ended = True
                rest = self._splitter.rest()
                if rest:
                    return [rest]
                break
            lines = self._splitter.feed(data)
            if lines:
                return lines
        raise StopAsyncIteration


class LineSplitter:
    """Complete lines (with their `\n`) out of bytes fed as they arrive; pure, no I/O.

    A line split over many feeds is joined once, when it ends, so a long line costs
    linear time; an unfinished line over MAX_LINE_BYTES is an upstream error.
    """

    __slots__ = ("_partial", "_partial_bytes")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the start of a line whose end has not arrived
        self._partial_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes, in order; empty if it completes none."""
        lines: list[bytes] = []
        if b"\n" in data:
            if self._partial:
                data = b"".join((*self._partial, data))
                self._partial.clear()
            *complete, data = data.split(b"\n")
            lines = [line + b"\n" for line in complete]
            self._partial_bytes = 0
        if data:
            self._partial.append(data)
            self._partial_bytes += len(data)
            if self._partial_bytes > MAX_LINE_BYTES:
                raise UpstreamUnavailableError("The upstream sent an over-long stream line.")
        return lines

    def rest(self) -> bytes:
        """What follows the last `\n` (at the end of the body: a line without one)."""
        rest = b"".join(self._partial)
        self._partial.clear()
        self._partial_bytes = 0
        return rest


class AiohttpUpstream:
    """One pooled aiohttp session per process, shared by every provider.

    The pool is as large as the default `server.max_concurrent_requests`: each admitted
    request holds at most one upstream connection, so admission bounds the sockets and
    a request never queues for a connection behind slow streams (a per-host cap of 256
    held 1,000 concurrent streams to a fifth of their rate in the benchmark).
    """

    def __init__(self, *, pool_size: int = 4096, pool_per_host: int = 4096) -> None:
        self._pool_size = pool_size
        self._pool_per_host = pool_per_host
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=self._pool_per_host, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                # Shared by every client: a cookie an upstream sets must not go back (rule 11).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        timeout = _call_timeout(req.timeouts)
        if within_s < req.timeouts.total_s:  # aiohttp's total includes the connect
            timeout = aiohttp.ClientTimeout(
                total=within_s, sock_connect=timeout.sock_connect, sock_read=timeout.sock_read
            )
        with _mapped_errors(connecting=True):
            response = await self._client().request(
                req.method,
                req.url,
                data=req.body,
                headers=req.headers,
                timeout=timeout,
                allow_redirects=False,
            )
        try:
            with _mapped_errors():
                body = await response.read()
            return UpstreamResponse(response.status, response.headers, body)
        finally:
            response.release()

    @asynccontextmanager
    async def stream(self, req: UpstreamRequest) -> AsyncIterator[UpstreamStream]:
        with _mapped_errors(connecting=True):
            response = await self._client().request(
                req.method,
                req.url,
                data=req.body,
                headers=req.headers,
                timeout=_stream_timeout(req.timeouts),
                allow_redirects=False,
            )
        try:
            yield AiohttpStream(response)
        finally:
            # Closing (not releasing) drops the connection if the body was not read to the
            # end: that is what cancels the upstream generation when the client left.
            response.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def http_upstream(name: str) -> Upstream:
    """The pooled HTTP transport `server.upstream_transport` names (`native` by default:
    gateway.upstream_native, our own HTTP/1.1 client)."""
    if name == "aiohttp":
        return AiohttpUpstream()
    if name == "native":
        from gateway.upstream_native import NativeUpstream  # it imports this module

        return NativeUpstream()
    from gateway.upstream_httpx import httpx_upstream  # imports httpx only when chosen

    return httpx_upstream(name)


# Timeouts come from config (one per provider): build each aiohttp value once, not per call.
@functools.lru_cache(maxsize=256)
def _call_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s)


@functools.lru_cache(maxsize=256)
def _stream_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """No total: a stream may run long; `read_s` bounds the first byte and every gap."""
    return aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.read_s)


@contextmanager
def _mapped_errors(connecting: bool = False) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into provider errors (the only place that knows).

    `connecting` marks failures before any response arrived: only those may be retried
    on the same deployment (a stale pooled connection, a refused connect).
    """
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise _mapped(exc, connecting) from None


_TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, ConnectionError, OSError)


def _mapped(exc: BaseException, connecting: bool = False) -> ProviderError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeoutError("The upstream did not answer in time.")
    error = UpstreamUnavailableError(f"Could not reach the upstream ({type(exc).__name__}).")
    error.during_connect = connecting
    return error


class DispatchingUpstream:
    """Sends each request to the transport registered for its URL scheme.

    `simulated://name/...` goes to the in-process simulator, everything else to the
    pooled HTTP transport; one object the pipeline holds.
    """

    def __init__(self, http: Upstream, by_scheme: Mapping[str, Upstream] | None = None) -> None:
        self._http = http
        self._by_scheme = dict(by_scheme or {})

    def _pick(self, url: str) -> Upstream:
        if url.startswith("http"):
            return self._http
        scheme, _, _ = url.partition("://")
        return self._by_scheme.get(scheme, self._http)

    def send(
        self, req: UpstreamRequest, within_s: float = math.inf
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        # The transport's own coroutine, not one more wrapped around it.
        return self._pick(req.url).send(req, within_s)

    def stream(self, req: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamStream]:
        return self._pick(req.url).stream(req)

    async def aclose(self) -> None:
        await self._http.aclose()
        for transport in self._by_scheme.values():
            await transport.aclose()
