"""httpx behind the upstream seam, to measure against aiohttp (issue 8); not the hot path.

`HttpxUpstream()` uses httpx's own pool; `HttpxUpstream(AiohttpTransport(...))` sends
through aiohttp under httpx's API (the `httpx-aiohttp` package, the `bench` extra). The
semantics are `AiohttpUpstream`'s: no redirects, `Timeouts` per request (a total deadline
for non-streaming calls only), every transport failure an `UpstreamTimeoutError` or
`UpstreamUnavailableError` (`during_connect` before the response), the same line batches
with the same MAX_LINE_BYTES bound, and closing a stream early drops its connection.

Outbound proxies are the native client's (gateway.transport.proxy decides, with the
same NO_PROXY rules): one client per proxy, each given its transport, so httpx reads no
proxy variable itself. Through a proxy, httpx-aiohttp sends with httpx's own transport.
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

from gateway.config import ProxySettings
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
from gateway.transport.proxy import ProxyChooser, proxy_refused

# What httpx-aiohttp's session may raise underneath (see `_mapped_httpx`).
_AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, *TRANSPORT_ERRORS)

POOL_SIZE = 4096  # as AiohttpUpstream's: admission bounds the sockets, never the pool
KEEPALIVE_S = 15.0  # aiohttp's default, so idle connections live as long under both
_LIMITS = httpx.Limits(
    max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE, keepalive_expiry=KEEPALIVE_S
)
_ERRORS: tuple[type[BaseException], ...] = (httpx.RequestError, *_AIOHTTP_ERRORS)
MAX_ROUTES = 4096  # (URL, proxy override) pairs: URLs come from config


def httpx_upstream(name: str, proxies: ProxySettings | None = None) -> Upstream:
    """The transport `server.upstream_transport` names, other than aiohttp.

    `httpx-aiohttp` must be installed: `reference_problems` reports it otherwise."""
    if name == "httpx":
        return HttpxUpstream(proxies=proxies)
    if name == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return HttpxUpstream(AiohttpTransport(client=_aiohttp_session), proxies)
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
    """One pooled `httpx.AsyncClient` per process and proxy (None: direct), shared by
    every provider. `proxies`: the environment's; a request's `proxy` overrides them."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        proxies: ProxySettings | None = None,
    ) -> None:
        self._transport = transport
        self._clients: dict[str | None, httpx.AsyncClient] = {}
        self._proxies = ProxyChooser(proxies)
        self._routes: dict[tuple[str, str | None], str | None] = {}  # -> the proxy's URL

    def _proxy_url(self, req: UpstreamRequest) -> str | None:
        """The proxy `req` goes through (None: direct), decided once per URL and override."""
        key = (req.url, req.proxy)
        if key not in self._routes:
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
            proxy = self._proxies.choose_for_url(req.url, req.proxy)
            self._routes[key] = None if proxy is None else proxy.url
        return self._routes[key]

    def _client(self, proxy_url: str | None) -> httpx.AsyncClient:
        client = self._clients.get(proxy_url)
        if client is None:
            # Created lazily, inside the running loop, as AiohttpUpstream's session. An
            # explicit transport: httpx then takes no proxy from the environment.
            transport = self._transport if proxy_url is None else None
            client = httpx.AsyncClient(
                transport=transport or httpx.AsyncHTTPTransport(limits=_LIMITS, proxy=proxy_url),
                limits=_LIMITS,
                follow_redirects=False,
                cookies=_no_cookies(),
            )
            del client.headers["user-agent"]  # as aiohttp's skip_auto_headers
            self._clients[proxy_url] = client
        return client

    def _request(self, client: httpx.AsyncClient, req: UpstreamRequest) -> httpx.Request:
        return client.build_request(
            req.method,
            req.url,
            content=req.body,
            headers=req.headers,
            timeout=_timeout(req.timeouts),
        )

    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        proxy_url = self._proxy_url(req)
        client = self._client(proxy_url)
        request = self._request(client, req)
        with _mapped_errors():  # the deadline's TimeoutError, raised on leaving its block
            async with asyncio.timeout(min(req.timeouts.total_s, within_s)):
                with _mapped_errors(connecting=True):
                    response = await client.send(request, stream=True)
                if proxy_url is not None:
                    await _refused_by_proxy(response)
                try:
                    with _mapped_errors():
                        body = await response.aread()
                finally:
                    await response.aclose()
        return UpstreamResponse(response.status_code, response.headers, body)

    @asynccontextmanager
    async def stream(self, req: UpstreamRequest) -> AsyncIterator[UpstreamStream]:
        proxy_url = self._proxy_url(req)
        client = self._client(proxy_url)
        request = self._request(client, req)
        with _mapped_errors(connecting=True):
            response = await client.send(request, stream=True)
            if proxy_url is not None:
                await _refused_by_proxy(response)
        try:
            yield HttpxStream(response)
        finally:
            # An unread body is not returned to the pool: closing drops the connection,
            # which cancels the upstream generation when the client left.
            with _mapped_errors():
                await response.aclose()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


async def _refused_by_proxy(response: httpx.Response) -> None:
    """Through a proxy, a 407 is the proxy's (an http:// upstream's request went to it in
    absolute form; a refused CONNECT is httpx's ProxyError): an upstream error, never
    relayed."""
    if response.status_code == 407:
        await response.aclose()
        raise proxy_refused(407)


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
