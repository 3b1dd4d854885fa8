"""The cache backends (memory: LRU in bytes, TTL; Redis: write-behind), the entry
format and the single flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis import Redis as SyncRedis

from gateway.cache.coalesce import SingleFlight
from gateway.cache.store import CacheEntry, MemoryCache, RedisCache
from gateway.config import RedisConfig
from gateway.redis.client import shared_redis
from gateway.telemetry.metrics import Metrics
from gateway.types import Usage
from tests.gatewayproc import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_entry_round_trip_and_garbage() -> None:
    entry = CacheEntry("fake/gpt", Usage(11, 7, 3, 1, 2, estimated=True), b'{"id":"x"}')
    assert CacheEntry.decode(entry.encode()) == entry
    for garbage in (b"", b"not json\n{}", b'{"deployment_id":"d"}\n{}', entry.encode()[:20]):
        assert CacheEntry.decode(garbage) is None


def test_memory_cache_expires_entries() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = MemoryCache(1000, clock)
        await cache.set("k", b"v", ttl_s=1)
        assert await cache.get("k") == b"v"
        clock.now_s += 1.0
        assert await cache.get("k") is None
        assert len(cache) == 0 and cache.size_bytes == 0

    run(scenario())


def test_memory_cache_evicts_least_recently_used_within_bytes() -> None:
    async def scenario() -> None:
        cache = MemoryCache(max_bytes=30, clock=Clock())
        await cache.set("a", b"x" * 9, 60)  # 10 bytes with its key
        await cache.set("b", b"x" * 9, 60)
        await cache.set("c", b"x" * 9, 60)
        assert await cache.get("a") is not None  # a is now the most recently used
        await cache.set("d", b"x" * 9, 60)
        assert await cache.get("b") is None  # b was the least recently used
        assert {k for k in "acd" if await cache.get(k)} == {"a", "c", "d"}
        assert cache.size_bytes == 30
        await cache.set("big", b"x" * 40, 60)  # larger than the whole cache: not stored
        assert await cache.get("big") is None and cache.size_bytes == 30
        await cache.set("a", b"y" * 4, 60)  # replacing frees the old size
        assert cache.size_bytes == 25

    run(scenario())


def test_memory_cache_purge_by_prefix() -> None:
    async def scenario() -> None:
        cache = MemoryCache(1000, Clock())
        for key in ("p:t1:a", "p:t1:b", "p:t2:a"):
            await cache.set(key, b"v", 60)
        assert await cache.purge("p:t1:") == 2
        assert await cache.get("p:t2:a") == b"v"
        assert await cache.purge("p:") == 1 and len(cache) == 0

    run(scenario())


def test_single_flight_one_leader_many_waiters() -> None:
    async def scenario() -> None:
        flights: SingleFlight[str] = SingleFlight(max_waiters=2)
        flight, leader = flights.join("k")
        assert flight is not None and leader
        waiting = []
        for _ in range(2):
            joined, is_leader = flights.join("k")
            assert joined is flight and not is_leader
            waiting.append(asyncio.ensure_future(joined.wait(5)))
        await asyncio.sleep(0)
        assert flights.join("k") == (None, False)  # full: the caller goes on its own
        flights.finish("k", flight, "answer")
        assert await asyncio.gather(*waiting) == ["answer", "answer"]
        assert len(flights) == 0
        again, leads = flights.join("k")  # a finished flight is forgotten
        assert again is not flight and leads

    run(scenario())


def test_abandoned_flight_lets_a_waiter_lead_and_cancelled_waiters_leave() -> None:
    async def scenario() -> None:
        flights: SingleFlight[str] = SingleFlight()
        flight, _ = flights.join("k")
        assert flight is not None
        stays = asyncio.ensure_future(flight.wait(5))
        leaves = asyncio.ensure_future(flight.wait(5))
        await asyncio.sleep(0)
        leaves.cancel()
        await asyncio.gather(leaves, return_exceptions=True)
        assert not flight.done and flight.waiters == 1  # a cancelled waiter cancels nothing
        flights.finish("k", flight, None)
        assert await stays is None
        second, leads = flights.join("k")
        assert second is not None and second is not flight and leads
        third, leads = flights.join("k")
        assert third is second and not leads
        with pytest.raises(TimeoutError):
            await third.wait(0.01)  # a waiter's wait is bounded

    run(scenario())


def test_a_waiter_of_a_flight_already_finished_gets_its_value() -> None:
    async def scenario() -> None:
        flights: SingleFlight[str] = SingleFlight()
        flight, _ = flights.join("k")
        assert flight is not None and not flight.done
        flights.finish("k", flight, "answer")
        assert flight.done and await flight.wait(0.01) == "answer"

    run(scenario())


def redis_cache(url: str, **kwargs: int) -> RedisCache:
    shared = shared_redis(
        RedisConfig(url=url, operation_deadline_s=1.0), Metrics(CollectorRegistry())
    )
    return RedisCache(shared, **kwargs)


async def close(cache: RedisCache) -> None:
    await cache.aclose()
    await cache._redis.aclose()


def test_redis_cache_writes_behind_and_reads_its_own_writes(redis_server: RedisServer) -> None:
    direct = SyncRedis.from_url(redis_server.url)
    direct.delete("wb:a", "wb:b")

    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        await cache.set("wb:a", b"one", 60)
        assert direct.get("wb:a") is None  # not sent yet: the response did not wait
        assert await cache.get("wb:a") == b"one"  # but this process already reads it
        for _ in range(100):
            if direct.get("wb:a") == b"one":
                break
            await asyncio.sleep(0.01)
        assert direct.get("wb:a") == b"one"
        assert 0 < direct.ttl("wb:a") <= 60
        await cache.set("wb:b", b"two", 60)
        await close(cache)  # shutdown sends what is still queued
        assert direct.get("wb:b") == b"two"

    run(scenario())
    direct.close()


def test_redis_cache_concurrent_reads_share_round_trips(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()  # private: no other client's commands counted
    direct = SyncRedis.from_url(server.url)
    keys = [f"rd:{i}" for i in range(50)]
    direct.mset({k: f"v{i}" for i, k in enumerate(keys) if i % 7})  # every 7th: a miss
    expected = [None if i % 7 == 0 else f"v{i}".encode() for i in range(50)]

    async def scenario() -> None:
        cache = redis_cache(server.url)
        try:
            before = direct.info("commandstats")
            assert await asyncio.gather(*(cache.get(k) for k in keys)) == expected
            after = direct.info("commandstats")
        finally:
            await close(cache)
        reads = sum(
            after.get(c, {}).get("calls", 0) - before.get(c, {}).get("calls", 0)
            for c in ("cmdstat_get", "cmdstat_mget")
        )
        assert 1 <= reads <= 3  # the first read alone, then one MGET for the rest

    try:
        run(scenario())
    finally:
        direct.close()
        server.stop()


def test_redis_cache_pending_writes_are_bounded_and_purged(redis_server: RedisServer) -> None:
    direct = SyncRedis.from_url(redis_server.url)

    async def scenario() -> None:
        cache = redis_cache(redis_server.url, max_pending_bytes=100)
        await cache.set("bound:t1:a", b"x" * 40, 60)
        await cache.set("bound:t1:b", b"x" * 40, 60)
        await cache.set("bound:t2:c", b"x" * 40, 60)  # past 100 queued bytes: dropped
        # Nothing yielded to the writer yet: the purge finds both still queued.
        assert await cache.purge("bound:t1:") == 0
        assert await cache.get("bound:t1:a") is None
        assert await cache.get("bound:t2:c") is None
        await close(cache)
        assert direct.keys("bound:*") == []

    run(scenario())
    direct.close()


def test_redis_cache_drops_writes_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()

    async def scenario() -> None:
        cache = redis_cache(server.url)
        assert await cache.get("down:a") is None  # connects while Redis is up
        server.stop()
        assert await cache.get("down:a") is None  # fails open, marks it down
        await cache.set("down:a", b"v", 60)  # dropped, not queued while down
        assert await cache.get("down:a") is None
        reads = asyncio.gather(*(cache.get(f"down:{i}") for i in range(10)))
        assert await asyncio.wait_for(reads, 5) == [None] * 10  # every reader answered
        await close(cache)

    try:
        run(scenario())
    finally:
        server.stop()
