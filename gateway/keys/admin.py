"""Create, list, revoke and rotate gateway keys at run time; keep every replica's mirror fresh.

The secret is generated here, returned once, and only its SHA-256 digest is stored.
The records live in SQL (`gateway.keys.sql_store`). Every `interval_s` a background
task reads their version counter (one small SELECT) and reloads the records only when
it changed, then swaps the new mirror into the `KeyStore` at once. So a key created or
revoked on one replica works or stops working on every replica within
`limits.key_sync_interval_s` (the replica that made the change applies it before
answering). While SQL is down the last mirror stays in force: requests never wait for
it. Redis plays no part, so a Redis restart, flush or eviction changes nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import GatewayConfig
from gateway.errors import DatabaseUnavailableError, InvalidRequestError, NotFoundError
from gateway.keys.legacy import load_redis_keys
from gateway.keys.record import KeyRecord, KeyRecords
from gateway.keys.sql_store import SqlKeyRecords
from gateway.keys.store import (
    Caller,
    KeyAttributes,
    KeyStore,
    RuntimeSecret,
    hash_key,
    key_attributes,
)
from gateway.records import RecordsUnavailableError
from gateway.redis import RedisUnavailableError, SharedRedis
from gateway.telemetry import Metrics

log = logging.getLogger("gateway")

SECRET_PREFIX = "gw-"
T = TypeVar("T")
_NEVER = object()
_MAX_LABELLED_KEYS = 500


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)  # random: says nothing about the secret


def public_record(record: KeyRecord) -> dict[str, object]:
    """What admins see: everything but the digests."""
    return _public(
        record.id,
        record,
        source="runtime",
        created_at=int(record.created_at),
        revoked=record.revoked_at is not None,
        revoked_at=int(record.revoked_at) if record.revoked_at is not None else None,
        previous_secret_valid_until=int(record.old_until) if record.old_digest else None,
    )


def public_config_key(caller: Caller, revoked: bool) -> dict[str, object]:
    sorted_routes = sorted(caller.routes) if caller.routes is not None else None
    return {
        **_public(caller.key_id, caller, source="config", created_at=None, revoked=revoked),
        "routes": sorted_routes,  # a config key's routes are a set
        "revoked_at": None,
        "previous_secret_valid_until": None,
    }


def _public(key_id: str, spec: KeyAttributes, **state: object) -> dict[str, object]:
    attributes = key_attributes(spec)
    routes = attributes["routes"]
    attributes["routes"] = list(routes) if routes is not None else None
    return {"object": "gateway.key", "id": key_id, **attributes, **state}


class KeyAdmin:
    def __init__(
        self, keys: KeyStore, records: KeyRecords, metrics: Metrics, interval_s: float
    ) -> None:
        self._keys = keys
        self._records = records
        self._metrics = metrics
        self._interval_s = interval_s
        self._version: object = _NEVER
        self._task: asyncio.Task[None] | None = None
        self._config_names = {caller.name for _, caller in keys.config_keys()}
        self._labelled: set[str] = set()
        self._label(caller for _, caller in keys.config_keys())

    async def start(self, redis: SharedRedis | None = None) -> None:
        """Load the runtime keys before serving, then keep them fresh in the background.
        `redis`: where an earlier version kept runtime keys, imported once."""
        try:
            if redis is not None and await self._records.version() is None:
                await self._adopt_legacy(redis)
            await self.refresh()
        except RecordsUnavailableError as exc:
            log.warning("key store (sql) unavailable at start (%s): config keys only", exc)
        self._task = asyncio.create_task(self._run(), name="key-sync")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except RecordsUnavailableError:
                pass  # the last mirror stays; the request writer logs SQL outages
            except Exception:  # a bug, not an outage: logged, and the sync goes on
                log.exception("key sync: refresh failed")

    async def refresh(self, force: bool = False) -> None:
        version = await self._records.version()  # read first: a change meanwhile reloads again
        if not force and version == self._version:
            return
        records, revoked_config = await self._records.load()
        now_s = time.time()
        mirror = {
            digest: RuntimeSecret(record.to_caller(), until)
            for record in records
            for digest, until in record.live_digests(now_s).items()
        }
        self._keys.replace_runtime(mirror, revoked_config)
        self._label(secret.caller for secret in mirror.values())
        self._version = version

    def _label(self, callers: Iterable[Caller]) -> None:
        for caller in callers:
            if caller.name not in self._labelled and len(self._labelled) >= _MAX_LABELLED_KEYS:
                continue  # bounded series: past this many keys, labels are not exported
            self._labelled.add(caller.name)
            for label, value in caller.labels.items():
                self._metrics.key_labels.labels(caller.name, label, value).set(1)

    async def create(self, template: KeyRecord) -> tuple[dict[str, object], str]:
        """The new key's public record and its secret (the only time it is shown)."""
        if template.name in self._config_names:
            raise InvalidRequestError(
                f"A config key is named '{template.name}' already.", param="name"
            )
        secret = new_secret()
        record = replace(template, id=new_key_id(), digest=hash_key(secret), created_at=time.time())
        if not await self._write(self._records.create(record)):
            raise InvalidRequestError(f"A key named '{record.name}' exists already.", param="name")
        await self._refresh_now()
        return public_record(record), secret

    async def list(self) -> list[dict[str, object]]:
        records, revoked = await self._write(self._records.load())
        listed = [
            public_config_key(caller, digest in revoked)
            for digest, caller in self._keys.config_keys()
        ]
        return listed + [public_record(r) for r in sorted(records, key=lambda r: r.created_at)]

    async def find(self, key_id: str) -> dict[str, object]:
        for item in await self.list():
            if item["id"] == key_id:
                return item
        raise NotFoundError(f"No key with id '{key_id}'.")

    async def revoke(self, key_id: str) -> dict[str, object]:
        for digest, caller in self._keys.config_keys():
            if caller.key_id == key_id:
                await self._write(self._records.revoke_config(digest))
                await self._refresh_now()
                return public_config_key(caller, True)
        record = await self._write(self._records.revoke(key_id))
        if record is None:
            raise NotFoundError(f"No key with id '{key_id}'.")
        await self._refresh_now()
        return public_record(record)

    async def rotate(self, key_id: str, grace_s: float) -> tuple[dict[str, object], str]:
        if any(caller.key_id == key_id for _, caller in self._keys.config_keys()):
            raise InvalidRequestError("Config keys are rotated in the config file.", param="id")
        secret = new_secret()
        record = await self._write(self._records.rotate(key_id, hash_key(secret), grace_s))
        if record is None:
            raise NotFoundError(f"No live key with id '{key_id}'.")
        await self._refresh_now()
        return public_record(record), secret

    async def _refresh_now(self) -> None:
        try:
            await self.refresh(force=True)
        except RecordsUnavailableError:
            pass  # the background sync catches up

    async def _write(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except RecordsUnavailableError:
            raise DatabaseUnavailableError(
                "The key store (SQL) is unreachable; try again shortly.", retry_after_s=2
            ) from None

    async def _adopt_legacy(self, redis: SharedRedis) -> None:
        try:
            records, revoked = await load_redis_keys(redis)
        except RedisUnavailableError:
            return  # nothing to import from a Redis that is not there
        if (records or revoked) and await self._records.adopt(records, revoked):
            log.warning("imported %d runtime keys from redis into sql (once)", len(records))


def build_key_admin(
    config: GatewayConfig, keys: KeyStore, engine: AsyncEngine, metrics: Metrics
) -> KeyAdmin:
    records: KeyRecords = SqlKeyRecords(engine)
    return KeyAdmin(keys, records, metrics, config.limits.key_sync_interval_s)
