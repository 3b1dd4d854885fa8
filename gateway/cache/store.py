"""Response cache storage: the entry format and two backends behind one protocol.

- `MemoryCache`: in-process LRU bounded in bytes, with per-entry TTL (the embedded
  default when no Redis is configured; one per worker process).
- `RedisCache`: the shared Redis pool (`SharedRedis`: short timeouts, no retries, an
  overall deadline, outage logged once and counted as redis_errors{operation="cache"}).
  It fails open: an error is a miss or a dropped write, never a failed request. Reads
  and writes go over its one pipelined connection (`RedisPipe`); writes are sent
  behind the response, in batches. After a failure it stops asking
  Redis for `probe_interval_s`, then lets one call probe, so a frozen Redis costs one
  timeout per interval, not one per request.

An entry is stored as bytes: one JSON line of metadata (who produced it, its usage),
then the `chat.completion` JSON exactly as a non-streaming client receives it, so a
hit is served without re-encoding and without any validation layer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import jsonutil
from gateway.errors import GatewayError
from gateway.redis import WRITE_LINGER_S, Command, RedisUnavailableError, SharedRedis
from gateway.types import Usage

_PURGE_BATCH = 500
_WRITE_BATCH = 128  # entries per pipelined write


class CacheUnavailableError(GatewayError):
    """The cache backend could not be reached for an admin operation."""

    status_code = 503
    code = "cache_unavailable"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    deployment_id: str  # the deployment that produced the answer (prices the saving)
    usage: Usage  # what the answer cost to produce
    body: bytes  # the chat.completion JSON

    def encode(self) -> bytes:
        u = self.usage
        meta = {
            "deployment_id": self.deployment_id,
            "usage": [
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens,
                u.estimated,
            ],
        }
        return jsonutil.dumps(meta) + b"\n" + self.body  # orjson never emits a raw newline

    @classmethod
    def decode(cls, data: bytes) -> CacheEntry | None:
        """None for anything that is not a well-formed entry (treated as a miss)."""
        meta_raw, newline, body = data.partition(b"\n")
        try:
            meta = jsonutil.loads(meta_raw)
            prompt, completion, cached, written, reasoning, estimated = meta["usage"]
            usage = Usage(prompt, completion, cached, written, reasoning, bool(estimated))
            deployment_id = str(meta["deployment_id"])
        except (jsonutil.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not newline or not body:
            return None
        return cls(deployment_id, usage, body)


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None (missing, expired, or the backend failed)."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store; a failure is dropped (fail open), never raised."""
        ...

    async def purge(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; raises CacheUnavailableError."""
        ...

    async def aclose(self) -> None:
        """Finish pending work (bounded); the cache is not used afterwards."""
        ...


class MemoryCache:
    """LRU over (key -> value, expiry); evicts the least recently used past max_bytes."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        size = _size(key, value)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (value, self._clock() + ttl_s)
        self.size_bytes += size
        while self.size_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    async def purge(self, prefix: str) -> int:
        doomed = [k for k in self._entries if k.startswith(prefix)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def aclose(self) -> None:
        pass  # nothing pending: writes are immediate

    def _remove(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.size_bytes -= _size(key, value)


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value)


class RedisCache:
    """Entries as plain Redis strings with EX; fail open with a probe interval.

    Writes are behind the response: `set` queues the entry (readable at once from
    this process) and a background task sends queued entries in pipelined batches,
    one round trip per batch. The queue is bounded in bytes; past it, or while Redis
    is down, writes are dropped, which for a cache only means a later miss.
    """

    def __init__(
        self,
        redis: SharedRedis,
        probe_interval_s: float = 1.0,
        max_pending_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._redis = redis
        self._probe_interval_s = probe_interval_s
        self._down = False
        self._retry_at = 0.0
        self._max_pending_bytes = max_pending_bytes
        self._pending: dict[str, tuple[bytes, int]] = {}  # key -> (value, ttl): not sent yet
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._reading = False  # a read is in flight
        self._queued_reads: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def reading(self) -> bool:
        """A read is in flight: the next waits for it, then goes in one MGET with every
        read queued meanwhile."""
        return self._reading

    async def get(self, key: str) -> bytes | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending[0]
        if not self._reading:
            values = await self._read([key])
            return values[0]
        # A read is in flight: join the next one, which asks for every key queued
        # meanwhile in one MGET (one round trip and one client-library pass for many).
        found: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._queued_reads.append((key, found))
        return await found

    async def _read(self, keys: list[str]) -> list[bytes | None]:
        """MGET, a miss for each key when Redis fails; then sends what queued meanwhile."""
        self._reading = True
        try:
            replies = await self._call([("MGET", *keys)])
            values = replies[0] if replies and isinstance(replies[0], list) else [None] * len(keys)
        finally:
            self._reading = False
            if self._queued_reads:
                self._read_queued()
        return [v if isinstance(v, bytes) else None for v in values]

    def _read_queued(self) -> None:
        queued, self._queued_reads = self._queued_reads, []
        task = asyncio.create_task(self._answer(queued))
        self._tasks.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, queued: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        values: list[bytes | None] = [None] * len(queued)
        try:
            values = await self._read([key for key, _ in queued])
        finally:  # failed or cancelled: every reader still gets an answer (a miss)
            for (_, found), value in zip(queued, values, strict=True):
                if not found.done():
                    found.set_result(value)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        size = _size(key, value)
        if self._down and time.monotonic() < self._retry_at:
            return  # Redis is down: a dropped write is a later miss
        if self._closing or key in self._pending:
            return
        if self._pending_bytes + size > self._max_pending_bytes:
            return
        self._pending[key] = (value, ttl_s)
        self._pending_bytes += size
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_behind(), name="cache-writes")
        self._wake.set()

    async def _write_behind(self) -> None:
        while not self._closing:
            await self._wake.wait()
            if len(self._pending) < _WRITE_BATCH and not self._closing:
                await asyncio.sleep(WRITE_LINGER_S)  # let a batch gather: fewer round trips
            self._wake.clear()
            while self._pending:
                await self._flush_batch()

    async def _flush_batch(self) -> None:
        batch = list(itertools.islice(self._pending.items(), _WRITE_BATCH))
        try:
            await self._call([("SET", key, value, "EX", ttl_s) for key, (value, ttl_s) in batch])
        finally:
            for key, (value, _) in batch:  # written or dropped: no longer pending
                if self._pending.pop(key, None) is not None:
                    self._pending_bytes -= _size(key, value)

    async def aclose(self, deadline_s: float = 1.0) -> None:
        """Let the writer send what is queued (for at most `deadline_s`), then stop it."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(writer), deadline_s)
        except TimeoutError:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def purge(self, prefix: str) -> int:
        for key in [k for k in self._pending if k.startswith(prefix)]:
            value, _ = self._pending.pop(key)
            self._pending_bytes -= _size(key, value)
        removed = 0
        try:
            async for keys in self._redis.scan("cache", prefix + "*", _PURGE_BATCH):
                removed += int(await self._or_unavailable(_unlink(keys)))
        except RedisUnavailableError:
            raise CacheUnavailableError("The cache backend (Redis) is unreachable.") from None
        return removed

    async def _call(self, commands: list[Command]) -> list[Any] | None:
        """The replies on the pipelined connection; None when Redis failed or is resting."""
        if not self._may_try():
            return None
        try:
            result = await self._redis.run_piped("cache", lambda p: p.execute_many(commands))
        except RedisUnavailableError:
            self._down, self._retry_at = True, time.monotonic() + self._probe_interval_s
            return None
        self._down = False
        return result

    def _may_try(self) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            return False
        if self._down:
            self._retry_at = now + self._probe_interval_s  # this call is the one probe
        return True

    async def _or_unavailable(self, call: Callable[[Any], Any]) -> Any:
        try:
            return await self._redis.run_or_raise("cache", call)
        except RedisUnavailableError:
            raise CacheUnavailableError("The cache backend (Redis) is unreachable.") from None


def _unlink(keys: list[bytes]) -> Callable[[Any], Any]:
    return lambda r: r.unlink(*keys)
