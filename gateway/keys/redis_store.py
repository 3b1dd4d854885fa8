"""Runtime gateway keys: records in Redis (or in memory without Redis), hashes only.

A key's secret is shown once, at creation or rotation; the store keeps its SHA-256
digest. Every change bumps a version counter, so replicas poll one small value and
reload the records only when something changed (`gateway.keys.admin`).

    gw:keys:rec:<id>        hash: the record (`KeyRecord.to_fields`)
    gw:keys:ids             set of every record id (revoked ones too, for listing)
    gw:keys:names           hash: name -> id of the live key with that name
    gw:keys:revoked_config  set: digests of config keys revoked at run time
    gw:keys:version         counter, bumped by every change
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gateway import jsonutil
from gateway.keys.store import Caller, caller_of
from gateway.redis import SharedRedis

RECORD = "gw:keys:rec:"
IDS = "gw:keys:ids"
NAMES = "gw:keys:names"
REVOKED_CONFIG = "gw:keys:revoked_config"
VERSION = "gw:keys:version"

# KEYS: 1 names, 2 ids, 3 record, 4 version. ARGV: 1 name, 2 id, then field, value, ...
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
redis.call('INCR', KEYS[4])
return 1
"""

# KEYS: 1 record, 2 names, 3 version. ARGV: 1 now (s). The name becomes free again.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'revoked_at') or '') ~= '' then return 1 end
local name, id = redis.call('HGET', KEYS[1], 'name'), redis.call('HGET', KEYS[1], 'id')
if redis.call('HGET', KEYS[2], name) == id then redis.call('HDEL', KEYS[2], name) end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1], 'old_digest', '', 'old_until', '0')
redis.call('INCR', KEYS[3])
return 1
"""

# KEYS: 1 record, 2 version. ARGV: 1 new digest, 2 old secret valid until (s; 0 = not at all)
_ROTATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'revoked_at') or '') ~= '' then return 0 end
local old = ''
if tonumber(ARGV[2]) > 0 then old = redis.call('HGET', KEYS[1], 'digest') end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'old_digest', old, 'old_until', ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    team: str | None = None
    routes: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    labels: Mapping[str, str] = field(default_factory=dict)
    max_concurrent: int | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    digest: str = ""  # SHA-256 of the current secret
    old_digest: str = ""  # the previous secret during a rotation's grace period
    old_until: float = 0.0

    def to_caller(self) -> Caller:
        return caller_of(self.id, self)

    def live_digests(self, now_s: float) -> dict[str, float | None]:
        """Digest -> valid until (None: no end) of the secrets that still authenticate."""
        if self.revoked_at is not None:
            return {}
        live: dict[str, float | None] = {self.digest: None}
        if self.old_digest and self.old_until > now_s:
            live[self.old_digest] = self.old_until
        return live

    def to_fields(self) -> dict[str, str]:
        def text(value: object) -> str:
            return "" if value is None else str(value)

        return {
            "id": self.id,
            "name": self.name,
            "team": text(self.team),
            "routes": "" if self.routes is None else jsonutil.dumps(list(self.routes)).decode(),
            "rpm": text(self.rpm),
            "tpm": text(self.tpm),
            "budget_usd": "" if self.budget_usd is None else repr(self.budget_usd),
            "budget_period": self.budget_period,
            "labels": jsonutil.dumps(dict(self.labels)).decode(),
            "max_concurrent": text(self.max_concurrent),
            "created_at": repr(self.created_at),
            "revoked_at": "" if self.revoked_at is None else repr(self.revoked_at),
            "digest": self.digest,
            "old_digest": self.old_digest,
            "old_until": repr(self.old_until),
        }

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> KeyRecord:
        f = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            id=f["id"],
            name=f["name"],
            team=f.get("team") or None,
            routes=tuple(jsonutil.loads(f["routes"])) if f.get("routes") else None,
            rpm=int(f["rpm"]) if f.get("rpm") else None,
            tpm=int(f["tpm"]) if f.get("tpm") else None,
            budget_usd=float(f["budget_usd"]) if f.get("budget_usd") else None,
            budget_period=f.get("budget_period") or "month",
            labels=jsonutil.loads(f.get("labels") or "{}"),
            max_concurrent=int(f["max_concurrent"]) if f.get("max_concurrent") else None,
            created_at=float(f.get("created_at") or 0),
            revoked_at=float(f["revoked_at"]) if f.get("revoked_at") else None,
            digest=f.get("digest", ""),
            old_digest=f.get("old_digest", ""),
            old_until=float(f.get("old_until") or 0),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KeyRecords(Protocol):
    """Redis-backed records raise `RedisUnavailableError`."""

    async def create(self, record: KeyRecord) -> bool: ...  # False: the name is taken

    async def revoke(self, key_id: str) -> KeyRecord | None: ...

    async def rotate(self, key_id: str, digest: str, grace_s: float) -> KeyRecord | None: ...

    async def revoke_config(self, digest: str) -> None: ...

    async def version(self) -> str | None: ...

    async def load(self) -> tuple[list[KeyRecord], frozenset[str]]: ...


class RedisKeyRecords:
    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis
        self._create = redis.client.register_script(_CREATE)
        self._revoke = redis.client.register_script(_REVOKE)
        self._rotate = redis.client.register_script(_ROTATE)

    async def _run(self, call: Any) -> Any:
        return await self._redis.run_or_raise("keys", call)

    async def create(self, record: KeyRecord) -> bool:
        pairs = [part for item in record.to_fields().items() for part in item]
        keys = [NAMES, IDS, RECORD + record.id, VERSION]
        args = [record.name, record.id, *pairs]
        return bool(await self._run(lambda _: self._create(keys=keys, args=args)))

    async def get(self, key_id: str) -> KeyRecord | None:
        raw = await self._run(lambda client: client.hgetall(RECORD + key_id))
        return KeyRecord.from_fields(raw) if raw else None

    async def revoke(self, key_id: str) -> KeyRecord | None:
        keys, args = [RECORD + key_id, NAMES, VERSION], [repr(time.time())]
        if not await self._run(lambda _: self._revoke(keys=keys, args=args)):
            return None
        return await self.get(key_id)

    async def rotate(self, key_id: str, digest: str, grace_s: float) -> KeyRecord | None:
        until = repr(time.time() + grace_s) if grace_s > 0 else "0"
        keys, args = [RECORD + key_id, VERSION], [digest, until]
        if not await self._run(lambda _: self._rotate(keys=keys, args=args)):
            return None
        return await self.get(key_id)

    async def revoke_config(self, digest: str) -> None:
        async def call(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.sadd(REVOKED_CONFIG, digest)
                pipe.incr(VERSION)
                await pipe.execute()

        await self._run(call)

    async def version(self) -> str | None:
        value = await self._run(lambda client: client.get(VERSION))
        return None if value is None else _text(value)

    async def load(self) -> tuple[list[KeyRecord], frozenset[str]]:
        async def call(client: Any) -> tuple[list[Any], set[Any]]:
            ids = sorted(await client.smembers(IDS))
            async with client.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(RECORD + _text(key_id))
                pipe.smembers(REVOKED_CONFIG)
                results = await pipe.execute()
            return results[:-1], results[-1]

        raws, revoked = await self._run(call)
        records = [KeyRecord.from_fields(raw) for raw in raws if raw]
        return records, frozenset(_text(d) for d in revoked)


class MemoryKeyRecords:
    """The same operations for a gateway without Redis: one process, lost on restart."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._revoked_config: set[str] = set()
        self._version = 0

    async def create(self, record: KeyRecord) -> bool:
        live = (r for r in self._records.values() if r.revoked_at is None)
        if any(r.name == record.name for r in live):
            return False
        self._records[record.id] = record
        self._version += 1
        return True

    async def revoke(self, key_id: str) -> KeyRecord | None:
        record = self._records.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = replace(record, revoked_at=time.time(), old_digest="", old_until=0.0)
            self._records[key_id] = record
            self._version += 1
        return record

    async def rotate(self, key_id: str, digest: str, grace_s: float) -> KeyRecord | None:
        record = self._records.get(key_id)
        if record is None or record.revoked_at is not None:
            return None
        old, until = (record.digest, time.time() + grace_s) if grace_s > 0 else ("", 0.0)
        record = replace(record, digest=digest, old_digest=old, old_until=until)
        self._records[key_id] = record
        self._version += 1
        return record

    async def revoke_config(self, digest: str) -> None:
        self._revoked_config.add(digest)
        self._version += 1

    async def version(self) -> str | None:
        return str(self._version)

    async def load(self) -> tuple[list[KeyRecord], frozenset[str]]:
        return list(self._records.values()), frozenset(self._revoked_config)
