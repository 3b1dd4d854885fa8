"""The response cache around the chat pipeline: look up, coalesce, store, account hits.

Per chat request (gateway/api/chat.py):
1. `ResponseCache.lookup` resolves the controls. Caching off for the route (globally
   off and not turned on by the route) -> None and no header. The route turned it
   off, or the request sent `Cache-Control: no-cache` (skip the read) or `no-store`
   (skip the read and the write) -> BYPASS. `x-gateway-cache-ttl` sets the TTL.
2. `CacheLookup.find` reads the backend. On a miss it joins an identical request in
   flight in this process (coalesce.py): the first is the leader and goes upstream;
   the others wait for its result.
3. The leader's answer is published to its waiters, then stored: non-streamed as is
   (`store_response`); streamed once the stream completed, assembled into one
   chat.completion (`relay`). Errors, interrupted streams and entries over
   `max_entry_bytes` are never stored.
4. If the leader fails with an upstream error, its waiters get the same error (they
   asked the same thing at the same time). If its result cannot be shared for any
   other reason (its client left, its stream broke, its own limits refused it), the
   waiters elect a new leader among themselves.
5. A hit, or a waiter served by its leader, costs nothing: cost 0, and the cost the
   answer had is reported as saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import jsonutil
from gateway.cache.coalesce import Flight, SingleFlight
from gateway.cache.key import cache_key, tenant_prefix
from gateway.cache.replay import Assembler, replay, to_sse
from gateway.cache.store import Cache, CacheEntry, MemoryCache, RedisCache
from gateway.config import CacheConfig, Deployment, GatewayConfig, Route, request_cost_usd
from gateway.context import RequestContext
from gateway.dialects import Dialect
from gateway.errors import (
    AllProvidersFailedError,
    GatewayError,
    NoEligibleDeploymentError,
    ProviderError,
    UpstreamTimeoutError,
)
from gateway.keys import Caller
from gateway.pipeline import ChatStream
from gateway.redis import SharedRedis
from gateway.routing import RoutingControls
from gateway.telemetry import Metrics
from gateway.types import ChatRequest, ChatResponse, Usage

log = logging.getLogger("gateway")

# A TTL sent by a client is honoured up to this (entries must expire some day).
MAX_TTL_S = 30 * 24 * 3600

# Errors that say something about the request or the upstreams, the same for every
# identical request: shared with waiters. Anything else is the leader's own business.
_SHAREABLE_ERRORS = (ProviderError, AllProvidersFailedError, NoEligibleDeploymentError)


# Wraps a wait so that it ends when the client hangs up (chat.py: until_disconnect).
Guard = Callable[[Coroutine[Any, Any, CacheEntry | None]], Awaitable[CacheEntry | None]]


@dataclass(frozen=True, slots=True)
class FlightResult:
    entry: CacheEntry | None = None
    error: GatewayError | None = None


@dataclass(frozen=True, slots=True)
class CacheControls:
    """Per-request cache controls (`cache-control`, `x-gateway-cache-ttl`)."""

    read: bool = True  # `no-cache` and `no-store` skip the read
    write: bool = True  # `no-store` skips the write
    ttl_s: int | None = None  # None: the route's, or the cache's


DEFAULT_CACHE_CONTROLS = CacheControls()


class ResponseCache:
    def __init__(
        self,
        backend: Cache,
        config: CacheConfig,
        metrics: Metrics,
        deployments: Mapping[str, Deployment],
        wait_timeout_s: float,
    ) -> None:
        self.backend = backend
        self._redis = backend if isinstance(backend, RedisCache) else None
        self.config = config
        self.flights: SingleFlight[FlightResult] = SingleFlight()
        self.wait_timeout_s = wait_timeout_s
        self._deployments = deployments
        self._saved = metrics.pending.count(metrics.cache_saved)
        self._results = {r: metrics.cache_result(r) for r in ("hit", "miss", "bypass")}

    def lookup(
        self,
        req: ChatRequest,
        route: Route,
        caller: Caller,
        routing: RoutingControls,
        controls: CacheControls,
        ctx: RequestContext,
        dialect: str = "chat",
    ) -> CacheLookup | None:
        enabled = self.config.enabled if route.cache_enabled is None else route.cache_enabled
        if not enabled:
            if self.config.enabled:
                self.record(ctx, "bypass")  # on globally, off for this route
            return None
        ttl_s = controls.ttl_s
        if ttl_s is None:
            ttl_s = route.cache_ttl_s or self.config.ttl_s
        read, write = controls.read, controls.write and ttl_s > 0
        body, native = req.body, req.native
        if native is not None:
            # The client's own body is what an upstream of its dialect is sent (fields the
            # chat body drops, e.g. thinking or top_k, change the answer); an answer a
            # replay would lose parts of is neither read, shared nor stored.
            body = native.body
            if not native.cacheable:
                read = write = False
        if not read:
            self.record(ctx, "bypass")
        key = cache_key(caller.tenant, body, routing, dialect)
        return CacheLookup(self, key, read, write, min(ttl_s, MAX_TTL_S), ctx)

    @property
    def reads_now(self) -> bool:
        """The next read goes to Redis at the end of this event-loop turn (none in flight
        to wait for): a command sent in this turn shares its write and round trip."""
        return self._redis is not None and not self._redis.reading

    def record(self, ctx: RequestContext, result: str) -> None:
        ctx.cache = result.upper()
        self._results[result].amount += 1

    def account_hit(self, entry: CacheEntry, ctx: RequestContext) -> None:
        """A hit costs nothing; what producing the answer cost is reported as saved."""
        d = self._deployments.get(entry.deployment_id)
        saved_usd = request_cost_usd(entry.usage, d) if d is not None else 0.0
        ctx.cost_usd, ctx.saved_usd = 0.0, saved_usd
        if d is not None:
            ctx.deployment_id, ctx.provider, ctx.model = d.id, d.provider, d.model
        self._saved.amount += saved_usd

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def purge(self, tenant: str | None) -> int:
        """Delete one tenant's entries, or every entry; raises CacheUnavailableError."""
        return await self.backend.purge(tenant_prefix(tenant))


def render_hit(entry: CacheEntry, req: ChatRequest, dialect: Dialect) -> bytes:
    """The body a client receives for a hit, in its dialect: the stored JSON, or its
    replay as a stream."""
    if dialect.name == "chat":
        return to_sse(jsonutil.loads(entry.body), req.include_usage) if req.stream else entry.body
    completion = jsonutil.loads(entry.body)
    if req.stream:
        return replay(completion, dialect.stream(req))
    return dialect.answer(completion, req)


class CacheLookup:
    """One request's view of the cache: its key, controls, and flight if it leads one."""

    def __init__(
        self,
        cache: ResponseCache,
        key: str,
        read: bool,
        write: bool,
        ttl_s: int,
        ctx: RequestContext,
    ) -> None:
        self.key = key
        self.read = read
        self.write = write
        self.ttl_s = ttl_s
        self._cache = cache
        self._ctx = ctx
        self._flight: Flight[FlightResult] | None = None
        self._handed_off = False  # a stream owns the flight from now on

    async def find(self, guard: Guard) -> CacheEntry | None:
        """A stored or coalesced answer, or None: this request goes upstream.

        `guard` wraps the wait on an identical request in flight (chat.py cancels it
        when the client hangs up); the backend read is bounded by its own deadline.
        """
        if not self.read:
            return None  # BYPASS: neither reads the cache nor joins others in flight
        entry: CacheEntry | None = None
        try:
            data = await self._cache.backend.get(self.key)
            entry = CacheEntry.decode(data) if data is not None else None
            if entry is None and self.write and self._cache.config.coalesce:
                flight = self._flight_to_wait_on()
                if flight is not None:  # most misses lead: no wait, no guard to pay for
                    entry = await guard(self._join(flight))
        finally:
            self._cache.record(self._ctx, "hit" if entry is not None else "miss")
        return entry

    def _flight_to_wait_on(self) -> Flight[FlightResult] | None:
        """An identical request's flight to wait on; None when this one leads (or too
        many wait already: it goes upstream alone)."""
        flight, leads = self._cache.flights.join(self.key)
        if leads:
            self._flight = flight
            return None
        return flight

    async def _join(self, flight: Flight[FlightResult]) -> CacheEntry | None:
        deadline = self._ctx.started + self._cache.wait_timeout_s
        while True:
            try:
                result = await flight.wait(deadline - time.perf_counter())
            except TimeoutError:
                raise UpstreamTimeoutError(
                    "Timed out waiting for an identical request in flight."
                ) from None
            if result is None:  # abandoned: lead a new flight, or wait on whoever does
                next_flight = self._flight_to_wait_on()
                if next_flight is None:
                    return None
                flight = next_flight
                continue
            if result.error is not None:
                # The same instance for every waiter: errors carry no per-request state,
                # and a fresh traceback keeps it from growing with each raise.
                raise result.error.with_traceback(None)
            return result.entry

    async def store_response(self, response: ChatResponse) -> bytes:
        """Publish a non-streamed answer to waiters, store it; returns the body bytes."""
        body = jsonutil.dumps(response.body)
        await self._publish(body)
        return body

    def relay(self, stream: ChatStream) -> AsyncGenerator[bytes, None]:
        """The stream's body; once it completed, its assembled answer is published."""
        self._handed_off = True
        if not self.write and self._flight is None:
            return stream.body()
        assembler = Assembler()
        stream.observe(assembler)
        return self._relay(stream, assembler)

    async def _relay(self, stream: ChatStream, assembler: Assembler) -> AsyncGenerator[bytes, None]:
        body = stream.body()
        try:
            async for piece in body:
                yield piece
            completion = assembler.result() if stream.completed else None  # never a partial one
            if completion is not None:
                await self._publish(jsonutil.dumps(completion))
        finally:
            await body.aclose()  # closed here, not at collection: it bills and closes upstream
            self._resolve(None)  # no-op once published

    async def _publish(self, body: bytes) -> None:
        ctx = self._ctx
        usage = ctx.usage if ctx.usage is not None else Usage(estimated=True)
        entry = CacheEntry(ctx.deployment_id or "", usage, body)
        self._resolve(FlightResult(entry=entry))
        if not self.write:
            return
        data = entry.encode()
        if len(data) <= self._cache.config.max_entry_bytes:
            await self._cache.backend.set(self.key, data, self.ttl_s)

    def fail(self, error: BaseException) -> None:
        """The leader failed: share the error if it is about the request, not the leader."""
        if isinstance(error, _SHAREABLE_ERRORS):
            self._resolve(FlightResult(error=error))

    def close(self) -> None:
        """End of the handler: a flight not handed to a stream is abandoned if still open."""
        if not self._handed_off:
            self._resolve(None)

    def _resolve(self, result: FlightResult | None) -> None:
        if self._flight is not None:
            self._cache.flights.finish(self.key, self._flight, result)
            self._flight = None


def build_response_cache(
    config: GatewayConfig,
    redis: SharedRedis | None,
    metrics: Metrics,
    deployments: Mapping[str, Deployment],
) -> ResponseCache | None:
    """None when no route can cache. Redis when configured (backend auto|redis)."""
    settings = config.cache
    if not settings.enabled and not any(r.cache.enabled for r in config.routes):
        return None
    backend: Cache
    if redis is not None and settings.backend in ("auto", "redis"):
        backend = RedisCache(redis)
        metrics.redis_errors.labels("cache")  # shows as 0 before the first outage
    else:
        if settings.backend == "redis":
            log.warning("cache.backend is redis but no redis is configured: caching in memory")
        backend = MemoryCache(settings.memory_max_bytes)
    return ResponseCache(backend, settings, metrics, deployments, config.server.request_timeout_s)
