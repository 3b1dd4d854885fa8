"""The upstream transport seam: adapters build `UpstreamRequest`s, a transport sends them.

aiohttp runs the hot path (measured several times faster than httpx's own pool under
concurrency). Every transport exception becomes an `UpstreamTimeoutError` or
`UpstreamUnavailableError` here, including during stream iteration, so nothing above
this module knows which HTTP library is in use. Redirects are never followed (rule 10).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from gateway.errors import UpstreamTimeoutError, UpstreamUnavailableError


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

    def lines(self) -> AsyncIterator[bytes]: ...


class Upstream(Protocol):
    async def send(self, req: UpstreamRequest) -> UpstreamResponse: ...

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

    async def lines(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            with _mapped_errors():
                line = await content.readline()
            if not line:
                return
            yield line


class AiohttpUpstream:
    """One pooled aiohttp session per process, shared by every provider."""

    def __init__(self, *, pool_size: int = 512, pool_per_host: int = 256) -> None:
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
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        t = req.timeouts
        timeout = aiohttp.ClientTimeout(
            total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s
        )
        with _mapped_errors(connecting=True):
            response = await self._client().request(
                req.method,
                req.url,
                data=req.body,
                headers=dict(req.headers),
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
        t = req.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.read_s)
        with _mapped_errors(connecting=True):
            response = await self._client().request(
                req.method,
                req.url,
                data=req.body,
                headers=dict(req.headers),
                timeout=timeout,
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


@contextmanager
def _mapped_errors(connecting: bool = False) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into provider errors (the only place that knows).

    `connecting` marks failures before any response arrived: only those may be retried
    on the same deployment (a stale pooled connection, a refused connect).
    """
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeoutError("The upstream did not answer in time.") from None
    except (aiohttp.ClientError, ConnectionError, OSError) as exc:
        error = UpstreamUnavailableError(f"Could not reach the upstream ({type(exc).__name__}).")
        error.during_connect = connecting
        raise error from None


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

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        return await self._pick(req.url).send(req)

    def stream(self, req: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamStream]:
        return self._pick(req.url).stream(req)

    async def aclose(self) -> None:
        await self._http.aclose()
        for transport in self._by_scheme.values():
            await transport.aclose()
