"""httpx behind the upstream seam, to measure against aiohttp (issue 8); not the hot path.

`HttpxUpstream()` uses httpx's own pool; `HttpxUpstream(AiohttpTransport(...))` sends
through aiohttp under httpx's API (the `httpx-aiohttp` package, the `bench` extra). The
semantics are `AiohttpUpstream`'s: no redirects, `Timeouts` per request (a total deadline
for non-streaming calls only), every transport failure an `UpstreamTimeoutError` or
`UpstreamUnavailableError` (`during_connect` before the response), the same line batches
with the same MAX_LINE_BYTES bound, and closing a stream early drops its connection.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import aiohttp
import httpx

from gateway.errors import ProviderError
from gateway.transport.base import (
    LineSplitter,
    Timeouts,
    Upstream,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)
from gateway.transport.errors import TRANSPORT_ERRORS, mapped

# What httpx-aiohttp's session may raise underneath (see `_mapped_httpx`).
_AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, *TRANSPORT_ERRORS)

POOL_SIZE = 4096  # as AiohttpUpstream's: admission bounds the sockets, never the pool
KEEPALIVE_S = 15.0  # aiohttp's default, so idle connections live as long under both
_LIMITS = httpx.Limits(
    max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE, keepalive_expiry=KEEPALIVE_S
)
_ERRORS: tuple[type[BaseException], ...] = (httpx.RequestError, *_AIOHTTP_ERRORS)


def httpx_upstream(name: str) -> Upstream:
    """The transport `server.upstream_transport` names, other than aiohttp.

    `httpx-aiohttp` must be installed: `reference_problems` reports it otherwise."""
    if name == "httpx":
        return HttpxUpstream()
    if name == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return HttpxUpstream(AiohttpTransport(client=_aiohttp_session))
    raise ValueError(f"unknown upstream transport {name!r}")


def _aiohttp_session() -> aiohttp.ClientSession:
    """httpx-aiohttp's session, as AiohttpUpstream's: its default one would keep cookies."""
    connector = aiohttp.TCPConnector(limit=POOL_SIZE, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar()
    )


def _no_cookies() -> CookieJar:
    """A jar that accepts nothing: one client serves everyone, so an upstream's cookie
    must not go back with the next request (rule 11)."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class HttpxStream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read_all(self) -> bytes:
        with _mapped_errors():
            return await self._response.aread()

    async def line_batches(self) -> AsyncIterator[list[bytes]]:
        """The lines completed by each network read, together (see AiohttpStream)."""
        splitter = LineSplitter()
        try:  # one handler around the loop: nothing per chunk
            async for data in self._response.aiter_bytes():
                lines = splitter.feed(data)
                if lines:
                    yield lines
        except _ERRORS as exc:
            raise _mapped_httpx(exc) from None
        rest = splitter.rest()
        if rest:
            yield [rest]


class HttpxUpstream:
    """One pooled `httpx.AsyncClient` per process, shared by every provider."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        # Created lazily, inside the running loop, as AiohttpUpstream's session.
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=self._transport,
                limits=_LIMITS,
                follow_redirects=False,
                cookies=_no_cookies(),
            )
            del self._http.headers["user-agent"]  # as aiohttp's skip_auto_headers
        return self._http

    def _request(self, req: UpstreamRequest) -> httpx.Request:
        return self._client().build_request(
            req.method,
            req.url,
            content=req.body,
            headers=req.headers,
            timeout=_timeout(req.timeouts),
        )

    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        client = self._client()
        request = self._request(req)
        with _mapped_errors():  # the deadline's TimeoutError, raised on leaving its block
            async with asyncio.timeout(min(req.timeouts.total_s, within_s)):
                with _mapped_errors(connecting=True):
                    response = await client.send(request, stream=True)
                try:
                    with _mapped_errors():
                        body = await response.aread()
                finally:
                    await response.aclose()
        return UpstreamResponse(response.status_code, response.headers, body)

    @asynccontextmanager
    async def stream(self, req: UpstreamRequest) -> AsyncIterator[UpstreamStream]:
        client = self._client()
        request = self._request(req)
        with _mapped_errors(connecting=True):
            response = await client.send(request, stream=True)
        try:
            yield HttpxStream(response)
        finally:
            # An unread body is not returned to the pool: closing drops the connection,
            # which cancels the upstream generation when the client left.
            with _mapped_errors():
                await response.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


@functools.lru_cache(maxsize=256)
def _timeout(t: Timeouts) -> httpx.Timeout:
    """`read_s` bounds the first byte and every gap (and a stalled write); waiting for a
    pooled connection counts as connecting. httpx has no total: `send` adds one."""
    return httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.read_s, pool=t.connect_s)


@contextmanager
def _mapped_errors(connecting: bool = False) -> Iterator[None]:
    try:
        yield
    except _ERRORS as exc:
        raise _mapped_httpx(exc, connecting) from None


def _mapped_httpx(exc: BaseException, connecting: bool = False) -> ProviderError:
    # httpx-aiohttp re-raises aiohttp's errors as httpx ones, some mislabelled (a refused
    # connection or a dropped one as ConnectTimeout): the original says what happened.
    cause = exc.__cause__
    if isinstance(cause, _AIOHTTP_ERRORS):
        return mapped(cause, connecting)
    if isinstance(exc, httpx.TimeoutException):
        return mapped(TimeoutError(str(exc)), connecting)
    return mapped(exc, connecting)
