"""Runtime keys that earlier versions kept in Redis, imported once into SQL.

Before the system of record, runtime keys lived in Redis only:

    gw:keys:rec:<id>        hash: the record's fields as text (`record_of`)
    gw:keys:ids             set of every record id
    gw:keys:revoked_config  set: digests of config keys revoked at run time

A gateway whose SQL has never held a key reads them from there at start-up, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway import jsonutil
from gateway.keys.record import KeyRecord
from gateway.redis import SharedRedis

RECORD = "gw:keys:rec:"
IDS = "gw:keys:ids"
REVOKED_CONFIG = "gw:keys:revoked_config"


async def load_redis_keys(redis: SharedRedis) -> tuple[list[KeyRecord], frozenset[str]]:
    async def call(client: Any) -> tuple[list[Any], set[Any]]:
        ids = sorted(await client.smembers(IDS))
        async with client.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(RECORD + decoded(key_id))
            pipe.smembers(REVOKED_CONFIG)
            results = await pipe.execute()
        return results[:-1], results[-1]

    raws, revoked = await redis.run_or_raise("keys", call)
    records = [record_of(raw) for raw in raws if raw]
    return records, frozenset(decoded(d) for d in revoked)


def record_of(raw: Mapping[Any, Any]) -> KeyRecord:
    """A record as the Redis hash held it (every field text; "" for none)."""
    f = {decoded(k): decoded(v) for k, v in raw.items()}
    return KeyRecord(
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


def decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
