"""The one Redis connection pool, with explicit short timeouts and no hidden retries.

`redis.mode: standalone` connects to `redis.url`; `sentinel` to the master that the
sentinels name (`redis.sentinels`, `redis.master_name`), found again after a failover:
redis-py's Sentinel pool asks the sentinels at each new connection, the pipelined
connection at each reconnect (gateway/redis/pipe.py); `cluster` to the masters of a
Redis Cluster: redis-py's cluster client, and one pipelined connection per master
(gateway/redis/cluster.py).

Every call goes through `SharedRedis.run`, which bounds it by an overall deadline,
counts failures in `gateway_redis_errors_total{operation}`, and logs once per
outage transition (down, then recovered: once Redis answers a PING), never once per
request (rule 7). Callers
decide what a failure means: the cache and rate limits fail open, budgets closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError

from gateway.config import RedisConfig
from gateway.redis.cluster import ClusterPipe
from gateway.redis.pipe import RedisPipe, close_sentinels
from gateway.redis.switch import SwitchWatch
from gateway.telemetry import Metrics

log = logging.getLogger("gateway")
T = TypeVar("T")

# How long a background writer waits for more writes to share its round trip: at low
# load each request would otherwise cost a Redis round trip of its own per writer.
WRITE_LINGER_S = 0.005


# What BlockingConnectionPool raises when no connection came free within its wait.
POOL_BUSY = "No connection available."
# What a call may raise when Redis cannot answer it: RedisClusterException (the cluster
# client's "no node reachable", "slot not covered") is not a RedisError.
FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)


class RedisUnavailableError(Exception):
    """Raised by `run_or_raise` when Redis failed or timed out."""


async def absorb_foreign_cancel(work: Awaitable[T]) -> T | None:
    """`work`'s result; None if it raised a CancelledError not aimed at this task.

    redis-py's `disconnect` re-raises the CancelledError of a connection whose connect
    its own timeout cut short (seen with the event loop saturated). Let through, it would
    end the request as if it had been cancelled: the client lost its answer and the
    server logged an unhandled error. A real cancel of this task still goes on.
    """
    try:
        return await work
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return None


def make_redis(config: RedisConfig) -> Redis:
    """A pool of at most `redis.max_connections`. A call that finds every connection busy
    waits for one within the operation deadline (back-pressure, rule 17): a busy pool is
    not an outage. In sentinel mode each new connection asks the sentinels where the
    master is (redis-py's Sentinel pool, made blocking: `_BlockingSentinelPool`). In
    cluster mode, redis-py's cluster client (`cluster_client`)."""
    if config.mode == "cluster":
        return cluster_client(config)  # type: ignore[return-value]  # the same commands
    options: dict[str, Any] = {
        "socket_timeout": config.socket_timeout_s,
        "socket_connect_timeout": config.connect_timeout_s,
        # no hidden retries: a slow Redis must not stall requests
        "retry": Retry(NoBackoff(), 0),
        "max_connections": config.max_connections,
        # Waits a little less than the call's deadline, so that a pool still busy then is
        # told apart from a Redis that does not answer (see `SharedRedis._failed`).
        "timeout": config.operation_deadline_s * 0.9,
        "health_check_interval": 0,
    }
    if config.mode == "sentinel":
        sentinel = sentinels_of(config)
        master: _SentinelMaster = sentinel.master_for(
            config.master_name or "",
            redis_class=_SentinelMaster,
            connection_pool_class=_BlockingSentinelPool,
            **master_options(config.url),
            **options,
        )
        master.owned_sentinel = sentinel
        return master  # aclose() closes the pool and the sentinels' connections
    pool = BlockingConnectionPool.from_url(config.url or "", **options)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def cluster_client(config: RedisConfig) -> RedisCluster:
    """redis-py's Redis Cluster client: it learns the layout from the seeds, sends each
    command to its slot's master and follows MOVED and ASK itself. At most
    `redis.max_connections` per node; a node whose connections are all busy raises at
    once (no wait: only background and admin calls use this client, never a request)."""
    options: dict[str, Any] = dict(parse_url(config.url or ""))
    options.pop("host", None), options.pop("port", None), options.pop("db", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    seeds = [ClusterNode(host, port) for host, port in config.cluster_seeds()]
    return RedisCluster(
        startup_nodes=seeds,
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
        retry=Retry(NoBackoff(), 0),  # no hidden retries; redirections are followed
        max_connections=config.max_connections,
        health_check_interval=0,
        **options,
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool with BlockingConnectionPool's wait for a free connection.

    SentinelConnectionPool alone derives from ConnectionPool, which raises at once when
    every connection is in use: under load, a busy pool would count as an outage (rule
    17). The Sentinel side only adds the master's address to connecting (asked anew
    for each connection; idle connections dropped when it changed) and the READONLY
    check on replies; checking out and in is BlockingConnectionPool's, unchanged."""


class _SentinelMaster(Redis):
    """The client of a `_BlockingSentinelPool`: it owns the `Sentinel` too."""

    owned_sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.owned_sentinel is not None:
                await close_sentinels(self.owned_sentinel)


def sentinels_of(config: RedisConfig) -> Sentinel:
    """redis-py's client of `redis.sentinels`: each asked in turn for the master, within
    the connect timeout to reach it and the socket timeout for its answer, no retries."""
    return Sentinel(
        config.sentinel_addresses(),
        sentinel_kwargs={
            "socket_timeout": config.socket_timeout_s,
            "socket_connect_timeout": config.connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "username": config.sentinel_username,
            "password": config.sentinel_password,
        },
    )


def master_options(url: str | None) -> dict[str, Any]:
    """The master's credentials, database and TLS from a sentinel-mode `redis.url`
    (which has no host: the sentinels name it), as redis-py's Sentinel pool takes them."""
    options: dict[str, Any] = dict(parse_url(url or "redis://"))
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True  # the pool picks its TLS connection class
    return options


def shared_redis(config: RedisConfig, metrics: Metrics) -> SharedRedis:
    """redis-py's pool for most calls, one pipelined connection for the hot path's (one
    per master of a cluster)."""
    if config.mode == "cluster":
        pipe: RedisPipe | ClusterPipe = ClusterPipe(
            config.url or "",
            config.cluster_seeds(),
            connect_timeout_s=config.connect_timeout_s,
            reply_deadline_s=config.operation_deadline_s,
        )
        return SharedRedis(make_redis(config), metrics, config.operation_deadline_s, pipe)
    sentinel = config.mode == "sentinel"
    pipe = RedisPipe(
        config.url or "redis://",
        connect_timeout_s=config.connect_timeout_s,
        reply_deadline_s=config.operation_deadline_s,
        sentinel=sentinels_of(config) if sentinel else None,
        master_name=config.master_name or "",
    )
    shared = SharedRedis(make_redis(config), metrics, config.operation_deadline_s, pipe)
    if sentinel:
        shared.switch_watch = SwitchWatch(config, shared.master_switched)
    return shared


class SharedRedis:
    """`run`/`run_or_raise` call redis-py's pool; `run_piped` sends plain commands on the
    one pipelined connection (`RedisPipe`): the response cache's reads and writes, and
    the limit writes (settles, releases) that follow every request.

    Admissions go on the pipelined connection too (measured: the pool's round trip per
    admission cost three quarters more CPU per request, and a burst ran the pool dry). The
    price: a command whose reply never comes holds up every command behind it until the
    deadline, so a frozen Redis refuses (or admits, per `limits.on_redis_error`) every
    admission of that moment at once.
    """

    def __init__(
        self, client: Redis, metrics: Metrics, deadline_s: float, pipe: RedisPipe | ClusterPipe
    ) -> None:
        self.client = client
        self.pipe = pipe
        self._metrics = metrics
        self._deadline_s = deadline_s
        self.healthy = True
        # A call that began before the last transition says nothing new about Redis: calls
        # in flight when it died (or came back) finish in any order, and must not log a
        # flap of transitions within milliseconds.
        self._changed_at = 0.0
        self._confirming: asyncio.Task[bool] | None = None  # the PING that may end an outage
        self.switch_watch: SwitchWatch | None = None  # sentinel mode: +switch-master

    def start(self) -> None:
        """Background work of the mode (sentinel: listen for failovers), if any."""
        if self.switch_watch is not None:
            self.switch_watch.start()

    async def master_switched(self, address: tuple[str, int]) -> None:
        """The sentinels made `address` the master (gateway/redis/switch.py): the
        pipelined connection to the old one is retired, the pool's connections dropped;
        both connect to the new master at their next command."""
        if isinstance(self.pipe, RedisPipe) and self.pipe.master_switched(address):
            log.warning("redis master switched to %s:%d; reconnecting", *address)
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            try:
                await absorb_foreign_cancel(pool.disconnect())
            except FAILURES:
                pass

    async def run(self, operation: str, call: Callable[[Redis], Awaitable[T]]) -> T | None:
        """The call's result, or None when Redis failed (already logged and counted)."""
        try:
            return await self.run_or_raise(operation, call)
        except RedisUnavailableError:
            return None

    # These two return the guarded call's coroutine rather than await it: one
    # coroutine less on every call (the cache's reads and writes among them).
    def run_or_raise(
        self, operation: str, call: Callable[[Redis], Awaitable[T]]
    ) -> Coroutine[Any, Any, T]:
        return self._guarded(operation, functools.partial(call, self.client), self._deadline_s)

    def run_piped(
        self, operation: str, call: Callable[[RedisPipe | ClusterPipe], Awaitable[T]]
    ) -> Coroutine[Any, Any, T]:
        """`run_or_raise` on the pipelined connection, with the same accounting. The
        pipe bounds each reply by the same deadline itself (after its connect, which
        `redis.connect_timeout_s` bounds), with one timer for every command in flight:
        no timeout here (on every cache read and write)."""
        return self._guarded(operation, functools.partial(call, self.pipe), None)

    async def scan(self, operation: str, match: str, count: int) -> AsyncIterator[list[bytes]]:
        """The keys that match `match`, a batch per SCAN step (each within the deadline),
        from every master of a cluster in turn. Raises RedisUnavailableError."""
        for node in await self.run_or_raise(operation, _scan_targets):
            cursor = 0
            while True:
                step = functools.partial(_scan_step, node=node, cursor=cursor, match=match)
                cursor, keys = await self.run_or_raise(operation, partial(step, count=count))
                if keys:
                    yield keys
                if cursor == 0:
                    break

    async def _guarded(
        self, operation: str, work: Callable[[], Awaitable[T]], deadline_s: float | None
    ) -> T:
        started = time.monotonic()
        try:
            if deadline_s is None:
                result = await work()
            else:
                async with asyncio.timeout(deadline_s):
                    result = await work()
        except FAILURES as exc:
            await self._failed(operation, exc, started)
            raise RedisUnavailableError(operation) from None
        self._succeeded(started)
        return result

    async def _drop_idle_connections(self) -> None:
        # The pool does not notice that the server closed an idle socket: every connection
        # idle when Redis went away would fail once after it came back (one more outage
        # logged, one more cache pause each). Dropped at a connection error only: a timeout
        # (a frozen Redis, or this process's own event loop running late under overload)
        # leaves the sockets sound, and reconnecting all of them would add to the load.
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            return  # the cluster client drops a failed node's connections itself
        try:
            await absorb_foreign_cancel(pool.disconnect(inuse_connections=False))
        except (RedisError, OSError):
            pass

    async def ping(self) -> bool:
        """A PING through the pool. Its answer is what ends an outage (`_succeeded`)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline_s):
                if isinstance(self.client, RedisCluster):  # every master answers
                    await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
                else:
                    await self.client.ping()
        except FAILURES as exc:
            await self._failed("ping", exc, started)
            return False
        if not self.healthy and started >= self._changed_at:
            self.healthy, self._changed_at = True, time.monotonic()
            log.warning("redis available again")
        return True

    async def _failed(self, operation: str, exc: BaseException, started: float) -> None:
        self._metrics.redis_errors.labels(operation).inc()
        if isinstance(exc, MaxConnectionsError) or (
            isinstance(exc, RedisConnectionError) and str(exc) == POOL_BUSY
        ):
            return  # every connection busy for the whole wait: load, not an outage
        if self.healthy and started >= self._changed_at:
            self.healthy, self._changed_at = False, time.monotonic()
            log.warning(
                "redis unavailable (%s during %s); failing open/closed per feature",
                type(exc).__name__,
                operation,
            )
        if isinstance(exc, (RedisConnectionError, OSError)):
            await self._drop_idle_connections()

    def _succeeded(self, started: float) -> None:
        # A call can succeed without Redis: an empty pipeline or batch sends nothing. Only
        # an answer says Redis is back, so during an outage a success sends one PING
        # (one at a time); it ends the outage if Redis answers it.
        if not self.healthy and started >= self._changed_at and self._confirming is None:
            self._confirming = asyncio.create_task(self.ping())
            self._confirming.add_done_callback(self._confirmed)

    def _confirmed(self, confirming: asyncio.Task[bool]) -> None:
        if self._confirming is confirming:
            self._confirming = None

    async def aclose(self) -> None:
        if self.switch_watch is not None:
            await self.switch_watch.aclose()
        confirming = self._confirming
        if confirming is not None:
            confirming.cancel()
            await asyncio.gather(confirming, return_exceptions=True)
        await self.pipe.aclose()
        await self.client.aclose()


async def _scan_targets(client: Redis | RedisCluster) -> list[Any]:
    """What to SCAN: the one Redis (None), or each master of a cluster."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # the layout, if no call has asked for it yet
        return list(client.get_primaries())
    return [None]


async def _scan_step(
    client: Any, *, node: Any, cursor: int, match: str, count: int
) -> tuple[int, list[bytes]]:
    if node is None:
        next_cursor, keys = await client.scan(cursor, match=match, count=count)
        return int(next_cursor), list(keys)
    cursors, keys = await client.scan(cursor, match=match, count=count, target_nodes=node)
    return int(cursors[node.name]), list(keys)
