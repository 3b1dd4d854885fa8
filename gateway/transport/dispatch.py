"""Which transport sends a request: the pooled HTTP transport `server.upstream_transport`
names, or another by URL scheme (`simulated://`)."""

from __future__ import annotations

import math
from collections.abc import Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.config import ProxySettings
from gateway.transport.base import Upstream, UpstreamRequest, UpstreamResponse, UpstreamStream


def http_upstream(name: str, proxies: ProxySettings | None = None) -> Upstream:
    """The pooled HTTP transport `server.upstream_transport` names (`native` by default:
    gateway.transport.native, our own HTTP/1.1 client). `proxies`: the environment's
    outbound proxies (gateway.config.environment_proxies), which native and httpx honour
    (aiohttp, kept only to measure against, ignores them); None: no proxy."""
    if name == "aiohttp":
        from gateway.transport.aiohttp import AiohttpUpstream

        return AiohttpUpstream()
    if name == "native":
        from gateway.transport.native import NativeUpstream

        return NativeUpstream(proxies)
    from gateway.transport.httpx import httpx_upstream

    return httpx_upstream(name, proxies)


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
