"""The aiohttp transport (`server.upstream_transport: aiohttp`), kept to measure the
native client against. Its exceptions are mapped here."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import aiohttp

from gateway.transport.base import (
    LineBatches,
    Timeouts,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)
from gateway.transport.errors import TRANSPORT_ERRORS, mapped

ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, *TRANSPORT_ERRORS)


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
        return LineBatches(self._response.content.readany, ERRORS)


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
    """Translate aiohttp/asyncio failures into provider errors.

    `connecting` marks failures before any response arrived: only those may be retried
    on the same deployment (a stale pooled connection, a refused connect).
    """
    try:
        yield
    except ERRORS as exc:
        raise mapped(exc, connecting) from None
