"""Share routing stats across workers and replicas through Redis, off the hot path.

Every `interval_s` a background task, per process:
1. publishes this process's cooldowns into one hash, keeping the later deadline
   (a Lua max, so replicas never shorten each other's cooldowns);
2. publishes its latency and error EWMAs under its own key with a short TTL, so a
   replica that died stops counting, and names itself in the set of replicas;
3. reads everything back and merges: cooldown = the latest deadline anywhere,
   EWMAs = the mean over live replicas that have a value. A replica whose key expired
   leaves the set. The set, not a SCAN: a SCAN walks the whole keyspace, response
   cache entries included (millions), on every round of every replica.
Requests never wait on Redis for routing; a Redis outage just stops the sharing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from gateway.redis import SharedRedis
from gateway.routing.stats import StatsStore

log = logging.getLogger("gateway")

COOLDOWN_KEY = "gw:stats:cooldown"
EWMA_PREFIX = "gw:stats:ewma:"
REPLICAS_KEY = "gw:stats:replicas"
_FIELDS = ("ttft_ewma_s", "per_token_ewma_s", "error_rate")

# KEYS[1] = hash; ARGV = deployment, deadline, deployment, deadline, ...
_MAX_SCRIPT = """
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


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
        await self._redis.run("stats", self._publish)
        snapshot = await self._redis.run("stats", self._read)
        if snapshot is not None:
            self._merge(*snapshot)

    async def _publish(self, client: Any) -> None:
        items = self._stats.items()
        cooldowns = [v for d, s in items if s.cooldown_until for v in (d, repr(s.cooldown_until))]
        ewmas = {
            f"{d}|{f}": getattr(s, f)
            for d, s in items
            for f in _FIELDS
            if getattr(s, f) is not None
        }
        async with client.pipeline(transaction=False) as pipe:
            if cooldowns:
                pipe.eval(_MAX_SCRIPT, 1, COOLDOWN_KEY, *cooldowns)
            if ewmas:
                key = EWMA_PREFIX + self._replica
                pipe.hset(key, mapping=ewmas)
                pipe.expire(key, max(5, int(self._interval_s * 5)))
                pipe.sadd(REPLICAS_KEY, self._replica)
            await pipe.execute()

    async def _read(self, client: Any) -> tuple[dict[str, float], list[dict[str, float]]]:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(COOLDOWN_KEY)
            pipe.smembers(REPLICAS_KEY)
            cooldowns, members = await pipe.execute()
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
        decoded = {k.decode(): float(v) for k, v in cooldowns.items()}
        return decoded, [{k.decode(): float(v) for k, v in t.items()} for t in tables]

    def _merge(self, cooldowns: dict[str, float], tables: list[dict[str, float]]) -> None:
        for deployment_id, deadline in cooldowns.items():
            stats = self._stats.get(deployment_id)
            stats.cooldown_until = max(stats.cooldown_until, deadline)
        sums: dict[str, list[float]] = {}
        for table in tables:
            for name, value in table.items():
                sums.setdefault(name, []).append(value)
        for name, values in sums.items():
            deployment_id, _, field = name.rpartition("|")
            if field in _FIELDS:
                setattr(self._stats.get(deployment_id), field, sum(values) / len(values))
