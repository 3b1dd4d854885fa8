"""Routing stats shared through a real Redis: EWMAs averaged over live replicas, found
through the set of replicas, never by walking the keyspace."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from redis import Redis as SyncRedis

from gateway.config import RedisConfig
from gateway.redis.client import shared_redis
from gateway.routing.stats import StatsStore
from gateway.routing.stats_sync import EWMA_PREFIX, REPLICAS_KEY, StatsSync
from gateway.telemetry.metrics import Metrics
from tests.gatewayproc import RedisServer

# A database of its own: gateways other tests left running share the session's Redis
# (database 0) and keep naming themselves in the replica set.
DB = 7


def _url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{DB}"


def _scans(direct: SyncRedis) -> int:
    return int(direct.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_replicas_average_their_ewmas_without_scanning(redis_server: RedisServer) -> None:
    direct = SyncRedis.from_url(_url(redis_server))
    direct.delete(REPLICAS_KEY)
    direct.mset({f"gw:cache:filler:{n}": "x" for n in range(2000)})  # cache entries, say

    async def run() -> tuple[float | None, float | None, set[bytes]]:
        redis = shared_redis(RedisConfig(url=_url(redis_server)), Metrics(CollectorRegistry()))
        one, two = (StatsStore(cooldown_failures=3, cooldown_s=1) for _ in range(2))
        one.success("d", ttft_s=1.0, output_tokens=0, total_s=1.0)
        two.success("d", ttft_s=3.0, output_tokens=0, total_s=3.0)
        syncs = [StatsSync(stats, redis, 1.0) for stats in (one, two)]
        try:
            for sync in syncs:  # the second reads what both published
                await sync.sync_once()
            return one.get("d").ttft_ewma_s, two.get("d").ttft_ewma_s, direct.smembers(REPLICAS_KEY)
        finally:
            await redis.aclose()

    scans = _scans(direct)
    first, second, members = asyncio.run(run())
    assert first == pytest.approx(1.0)  # it synced when it was the only one
    assert second == pytest.approx(2.0)
    assert len(members) == 2
    assert _scans(direct) == scans  # the keyspace was never walked
    direct.close()


def test_a_replica_whose_key_expired_leaves_the_set(redis_server: RedisServer) -> None:
    direct = SyncRedis.from_url(_url(redis_server))
    direct.delete(REPLICAS_KEY)
    direct.sadd(REPLICAS_KEY, "gone-replica")  # its EWMA key expired long ago

    async def run() -> set[bytes]:
        redis = shared_redis(RedisConfig(url=_url(redis_server)), Metrics(CollectorRegistry()))
        stats = StatsStore(cooldown_failures=3, cooldown_s=1)
        stats.success("d", ttft_s=0.5, output_tokens=0, total_s=0.5)
        try:
            await StatsSync(stats, redis, 1.0).sync_once()
            return direct.smembers(REPLICAS_KEY)
        finally:
            await redis.aclose()

    members = asyncio.run(run())
    assert b"gone-replica" not in members and len(members) == 1
    (live,) = members
    assert direct.ttl(EWMA_PREFIX + live.decode()) > 0  # the live one keeps a TTL
    direct.close()
