"""Runtime keys that earlier versions kept in Redis, imported once into SQL.

Before the system of record, runtime keys lived in Redis only:

    gw:keys:rec:<id>        hash: the record (`KeyRecord.to_fields`)
    gw:keys:ids             set of every record id
    gw:keys:revoked_config  set: digests of config keys revoked at run time

A gateway whose SQL has never held a key reads them from there at start-up, once.
"""

from __future__ import annotations

from typing import Any

from gateway.keys.record import KeyRecord, decoded
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
    records = [KeyRecord.from_fields(raw) for raw in raws if raw]
    return records, frozenset(decoded(d) for d in revoked)
