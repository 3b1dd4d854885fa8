"""Runtime keys in SQL, the system of record: they survive a Redis restart, flush or
eviction, and so do revocations (of runtime and of config keys).

Every change runs in one transaction that also bumps the `keys_version` counter in
`gateway_state`. Replicas poll that one value (`KeyAdmin`, every
`limits.key_sync_interval_s`) and reload the records only when it changed; the counter
only goes up, so no replica ever mistakes an old state for the current one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import jsonutil
from gateway.keys.record import KeyRecord
from gateway.records import (
    KEY_TABLE,
    REVOKED_CONFIG_TABLE,
    SQL_ERRORS,
    STATE_TABLE,
    RecordsUnavailableError,
)

VERSION = "keys_version"
_KEYS = KEY_TABLE
_REVOKED = REVOKED_CONFIG_TABLE
_STATE = STATE_TABLE


class SqlKeyRecords:
    """The `KeyRecords` operations on SQL; raise `RecordsUnavailableError` when it is down."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, record: KeyRecord) -> bool:
        try:
            async with self._transaction() as conn:
                version = await _bump(conn)
                await conn.execute(insert(_KEYS).values(**_columns(record), version=version))
        except IntegrityError:
            return False  # a live key has this name (the partial unique index)
        return True

    async def revoke(self, key_id: str) -> KeyRecord | None:
        async with self._transaction() as conn:
            record = await _get(conn, key_id)
            if record is None or record.revoked_at is not None:
                return record
            version = await _bump(conn)
            now = time.time()
            values = {"revoked_at": now, "old_digest": "", "old_until": 0.0, "version": version}
            await conn.execute(update(_KEYS).where(_KEYS.c.id == key_id).values(**values))
        return await self.get(key_id)

    async def rotate(self, key_id: str, digest: str, grace_s: float) -> KeyRecord | None:
        async with self._transaction() as conn:
            record = await _get(conn, key_id)
            if record is None or record.revoked_at is not None:
                return None
            version = await _bump(conn)
            old, until = (record.digest, time.time() + grace_s) if grace_s > 0 else ("", 0.0)
            values = {"digest": digest, "old_digest": old, "old_until": until, "version": version}
            await conn.execute(update(_KEYS).where(_KEYS.c.id == key_id).values(**values))
        return await self.get(key_id)

    async def revoke_config(self, digest: str) -> None:
        async with self._transaction() as conn:
            exists = await conn.scalar(select(_REVOKED.c.digest).where(_REVOKED.c.digest == digest))
            if exists is None:
                version = await _bump(conn)
                row = {"digest": digest, "revoked_at": time.time(), "version": version}
                await conn.execute(insert(_REVOKED).values(**row))

    async def adopt(self, records: list[KeyRecord], revoked_config: frozenset[str]) -> bool:
        """Imports keys from an earlier store, only into a database that never held a key
        (no `keys_version` yet); False when it had some."""
        async with self._transaction() as conn:
            if await conn.scalar(select(_STATE.c.value).where(_STATE.c.name == VERSION)):
                return False
            version = await _bump(conn)
            for record in records:
                await conn.execute(insert(_KEYS).values(**_columns(record), version=version))
            now = time.time()
            for digest in revoked_config:
                row = {"digest": digest, "revoked_at": now, "version": version}
                await conn.execute(insert(_REVOKED).values(**row))
        return True

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._connection() as conn:
            return await _get(conn, key_id)

    async def version(self) -> str | None:
        async with self._connection() as conn:
            value = await conn.scalar(select(_STATE.c.value).where(_STATE.c.name == VERSION))
        return None if value is None else str(value)

    async def load(self) -> tuple[list[KeyRecord], frozenset[str]]:
        async with self._connection() as conn:
            rows = (await conn.execute(select(_KEYS).order_by(_KEYS.c.created_at))).all()
            revoked = (await conn.execute(select(_REVOKED.c.digest))).scalars().all()
        return [_record(row._mapping) for row in rows], frozenset(revoked)

    def _transaction(self) -> Any:
        return _guarded(self._engine.begin())

    def _connection(self) -> Any:
        return _guarded(self._engine.connect())


@asynccontextmanager
async def _guarded(context: Any) -> AsyncIterator[AsyncConnection]:
    """An engine context that turns SQL being unreachable into `RecordsUnavailableError`
    (an integrity error passes: it is an answer, not an outage)."""
    try:
        async with context as conn:
            yield conn
    except IntegrityError:
        raise
    except SQL_ERRORS as exc:
        raise RecordsUnavailableError(type(exc).__name__) from None


async def _bump(conn: AsyncConnection) -> int:
    """The next keys_version, in the caller's transaction (row-locked until it commits)."""
    statement = (
        update(_STATE)
        .where(_STATE.c.name == VERSION)
        .values(value=_STATE.c.value + 1)
        .returning(_STATE.c.value)
    )
    value = await conn.scalar(statement)
    if value is None:  # a database no key was ever written to
        await conn.execute(insert(_STATE).values(name=VERSION, value=1))
        return 1
    return int(value)


async def _get(conn: AsyncConnection, key_id: str) -> KeyRecord | None:
    row = (await conn.execute(select(_KEYS).where(_KEYS.c.id == key_id))).first()
    return None if row is None else _record(row._mapping)


def _columns(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "team": record.team,
        "routes": None if record.routes is None else jsonutil.dumps(list(record.routes)).decode(),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget_usd": None if record.budget_usd is None else Decimal(repr(record.budget_usd)),
        "budget_period": record.budget_period,
        "labels": jsonutil.dumps(dict(record.labels)).decode(),
        "max_concurrent": record.max_concurrent,
        "log_payloads": record.log_payloads,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "digest": record.digest,
        "old_digest": record.old_digest,
        "old_until": record.old_until,
    }


def _record(row: Any) -> KeyRecord:
    budget = row["budget_usd"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        team=row["team"],
        routes=tuple(jsonutil.loads(row["routes"])) if row["routes"] is not None else None,
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=float(budget) if budget is not None else None,
        budget_period=row["budget_period"],
        labels=jsonutil.loads(row["labels"]),
        max_concurrent=row["max_concurrent"],
        log_payloads=bool(row["log_payloads"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        digest=row["digest"],
        old_digest=row["old_digest"],
        old_until=row["old_until"],
    )
