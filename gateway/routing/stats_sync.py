"""Share routing stats across workers and replicas through Redis, off the hot path.

Every `interval_s` a background task, per process:
1. publishes the cooldowns this process began into one hash, keeping the later deadline
   (a Lua max, so replicas never shorten each other's cooldowns), unless an operator
   cleared the deployment since it began (`gateway.routing.cooldowns`);
2. publishes its latency and error EWMAs under its own key with a short TTL, so a
   replica that died stops counting, and names itself in the set of replicas;
3. reads everything back and merges: first the clears it has not applied yet, then
   cooldown = the latest deadline anywhere, EWMAs = the mean over live replicas that
   have a value. A replica whose key expired leaves the set. The set, not a SCAN: a
   SCAN walks the whole keyspace, response cache entries included (millions), on every
   round of every replica.
Requests never wait on Redis for routing; a Redis outage just stops the sharing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from gateway.redis import SharedRedis
from gateway.routing.cooldowns import (
    PUBLISH_SCRIPT,
    SHARED_KEYS,
    STATS_TAG,
    SharedCooldowns,
    read_snapshot,
)
from gateway.routing.stats import StatsStore

log = logging.getLogger("gateway")

# With the cooldown keys' hash tag: one slot of a Redis Cluster for all the stats.
EWMA_PREFIX = STATS_TAG + "ewma:"
REPLICAS_KEY = STATS_TAG + "replicas"
_FIELDS = ("ttft_ewma_s", "per_token_ewma_s", "error_rate")


class StatsSync:
    def __init__(self, stats: StatsStore, redis: SharedRedis, interval_s: float) -> None:
        self._stats = stats
        self._redis = redis
        self._interval_s = interval_s
        self._replica = uuid.uuid4().hex[:12]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stats-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.sync_once()

    async def sync_once(self) -> None:
        cooldowns, ewmas = self._own()
        if cooldowns or ewmas:  # else nothing to send (an idle process)
            await self._redis.run("stats", lambda client: self._publish(client, cooldowns, ewmas))
        snapshot = await self._redis.run("stats", self._read)
        if snapshot is not None:
            self._merge(*snapshot)

    def _own(self) -> tuple[list[str], dict[str, float]]:
        """This process's cooldowns (flattened for PUBLISH_SCRIPT) and EWMAs to publish."""
        items = self._stats.items()
        now = time.time()
        # Its own cooldowns only (`cooled_at`): one learnt from Redis is there already,
        # unless a clear removed it.
        cooldowns = [
            v
            for d, s in items
            if s.cooled_at and s.cooldown_until > now
            for v in (d, repr(s.cooldown_until), repr(s.cooled_at), s.reason or "")
        ]
        ewmas = {
            f"{d}|{f}": getattr(s, f)
            for d, s in items
            for f in _FIELDS
            if getattr(s, f) is not None
        }
        return cooldowns, ewmas

    async def _publish(self, client: Any, cooldowns: list[str], ewmas: dict[str, float]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            if cooldowns:
                pipe.eval(PUBLISH_SCRIPT, len(SHARED_KEYS), *SHARED_KEYS, *cooldowns)
            if ewmas:
                key = EWMA_PREFIX + self._replica
                pipe.hset(key, mapping=ewmas)
                pipe.expire(key, max(5, int(self._interval_s * 5)))
                pipe.sadd(REPLICAS_KEY, self._replica)
            await pipe.execute()

    async def _read(self, client: Any) -> tuple[SharedCooldowns, list[dict[str, float]]]:
        # One snapshot (a script): deadlines and clears read apart could pair a deadline
        # with a clear made after it was read (see `_merge`).
        deadlines, reasons, cleared, members = await read_snapshot(client, [REPLICAS_KEY])
        replicas = sorted(members)
        async with client.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.hgetall(EWMA_PREFIX + replica.decode())
            tables = await pipe.execute()
        # A replica whose key expired stopped publishing; if it comes back, it adds
        # itself again.
        gone = [r for r, table in zip(replicas, tables, strict=True) if not table]
        if gone:
            await client.srem(REPLICAS_KEY, *gone)
        shared = SharedCooldowns.decode(deadlines, reasons, cleared)
        return shared, [{k.decode(): float(v) for k, v in t.items()} for t in tables]

    def _merge(self, shared: SharedCooldowns, tables: list[dict[str, float]]) -> None:
        for deployment_id, at in shared.cleared.items():
            self._stats.clear(deployment_id, at)  # nothing unless new to this process
        for deployment_id, deadline in shared.deadlines.items():
            stats = self._stats.get(deployment_id)
            if stats.cleared_at > shared.cleared.get(deployment_id, 0.0):
                continue  # read before a clear this process made: the deadline it ended
            if deadline > stats.cooldown_until:
                stats.cooldown_until = deadline
                stats.reason = shared.reasons.get(deployment_id, stats.reason)
        sums: dict[str, list[float]] = {}
        for table in tables:
            for name, value in table.items():
                sums.setdefault(name, []).append(value)
        for name, values in sums.items():
            deployment_id, _, field = name.rpartition("|")
            if field in _FIELDS:
                setattr(self._stats.get(deployment_id), field, sum(values) / len(values))
