"""Stored Responses (`POST /v1/responses` with `store`, the default): what
`previous_response_id` continues and `GET|DELETE /v1/responses/{id}` read, in SQL.

A response is written before its answer goes out (one INSERT, on the Responses path
only), so the next request, on any replica, finds it. Reads are scoped to the caller's
tenant: another tenant's response is not there for it. A conversation is the chain of
`previous_response_id`s, read in one recursive query (each row holds its own input
items and its Response, not the whole conversation: storage grows with the turns, not
with their square).

While SQL is unreachable, a save waits at most `database.connect_timeout_s` once, then
for `_RETRY_S` goes straight to this process's memory (at most `_HELD_MAX` responses;
the oldest are dropped past it): the response is answered anyway, continues on this
process, and is written when SQL is back (a background task retries every `_RETRY_S`).
Lost if the process stops before that. Rows older than
`database.response_retention_days` are deleted hourly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import jsonutil
from gateway.config import DatabaseConfig
from gateway.records.db import is_sqlite
from gateway.records.tables import responses
from gateway.records.writer import SQL_ERRORS
from gateway.types import JSONObject

log = logging.getLogger("gateway")

_RETRY_S = 5.0
_PRUNE_EVERY_S = 3600.0
_HELD_MAX = 1000
MAX_TURNS = 1000  # the longest chain of previous_response_ids followed


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    created_at: float
    previous_response_id: str | None
    input_items: list[JSONObject]  # this request's input only
    response: JSONObject  # the Response object as answered


class ResponseStore:
    def __init__(self, engine: AsyncEngine, config: DatabaseConfig) -> None:
        self._engine = engine
        self._config = config
        self._insert = _dialect_insert(engine)
        self._held: OrderedDict[str, StoredResponse] = OrderedDict()  # not in SQL yet
        self._down_until = 0.0  # monotonic: saves skip SQL until then (it just failed)
        self._healthy = True
        self._task: asyncio.Task[None] | None = None

    # -- the Responses path ----------------------------------------------------------------

    async def save(self, stored: StoredResponse) -> bool:
        """Written to SQL (True), or held in memory while SQL is unreachable (False)."""
        if time.monotonic() < self._down_until:
            self._hold(stored)
            return False
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                await self._write([stored])
        except SQL_ERRORS as exc:
            self._failed(exc)
            self._hold(stored)
            return False
        return True

    async def conversation(self, response_id: str, tenant: str) -> list[StoredResponse] | None:
        """The response and every one it continues, oldest first; None when this tenant
        has no such response. The chain ends at a response no longer stored (deleted, or
        past retention). Raises SQL_ERRORS when SQL is unreachable."""
        chain: list[StoredResponse] = []
        current: str | None = response_id
        while current is not None and len(chain) < MAX_TURNS:
            held = self._held.get(current)
            if held is not None:
                if held.tenant != tenant:
                    break
                chain.append(held)
                current = held.previous_response_id
                continue
            found = await self._chain(current, tenant)
            if not found:
                break
            chain += found
            current = found[-1].previous_response_id
        if not chain:
            return None
        chain.reverse()
        return chain

    # -- GET / DELETE ----------------------------------------------------------------------

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        held = self._held.get(response_id)
        if held is not None:
            return held if held.tenant == tenant else None
        query = select(responses).where(responses.c.id == response_id, responses.c.tenant == tenant)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _stored(row) if row is not None else None

    async def delete(self, response_id: str, tenant: str) -> bool:
        held = self._held.get(response_id)
        if held is not None and held.tenant == tenant:
            del self._held[response_id]
            return True
        where = responses.c.id == response_id, responses.c.tenant == tenant
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(responses).where(*where))
        return bool(result.rowcount)

    # -- SQL -------------------------------------------------------------------------------

    async def _write(self, rows: list[StoredResponse]) -> None:
        # DO NOTHING on the id: a retried write whose first commit went through is a no-op.
        statement = self._insert(responses).on_conflict_do_nothing(index_elements=["id"])
        async with self._engine.begin() as conn:
            await conn.execute(statement, [_row(r) for r in rows])

    async def _chain(self, start: str, tenant: str) -> list[StoredResponse]:
        """`start` and its predecessors, newest first, in one recursive query."""
        r = responses.c
        first = select(
            r.id, r.tenant, r.created_at, r.previous_response_id, r.input_items, r.response,
            literal(0).label("depth"),
        ).where(r.id == start, r.tenant == tenant)  # fmt: skip
        chain = first.cte("chain", recursive=True)
        parent = responses.alias("parent")
        p = parent.c
        step = select(
            p.id, p.tenant, p.created_at, p.previous_response_id, p.input_items, p.response,
            chain.c.depth + 1,
        ).where(
            p.id == chain.c.previous_response_id, p.tenant == tenant, chain.c.depth < MAX_TURNS
        )  # fmt: skip
        chain = chain.union_all(step)
        async with self._engine.connect() as conn:
            result = await conn.execute(select(chain).order_by(chain.c.depth))
            return [_stored(row) for row in result]

    # -- outages and retention -------------------------------------------------------------

    def _hold(self, stored: StoredResponse) -> None:
        self._held[stored.id] = stored
        while len(self._held) > _HELD_MAX:
            dropped, _ = self._held.popitem(last=False)
            log.warning("stored responses: %s dropped (SQL unreachable, memory full)", dropped)

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + _RETRY_S
        if self._healthy:
            self._healthy = False
            log.warning(
                "sql unavailable (%s while storing a response); stored responses are held in "
                "memory until it is back",
                type(exc).__name__,
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stored-responses")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._held:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._flush_held()
            except (TimeoutError, *SQL_ERRORS):
                log.warning("stored responses: %d not written at shutdown", len(self._held))

    async def _run(self) -> None:
        pruned_at = 0.0
        while True:
            await asyncio.sleep(_RETRY_S)
            try:
                if self._held:
                    await self._flush_held()
                if time.monotonic() - pruned_at > _PRUNE_EVERY_S:
                    await self.prune()
                    pruned_at = time.monotonic()
            except SQL_ERRORS as exc:
                self._failed(exc)
            except Exception:  # a bug, not an outage: logged, and the task goes on
                log.exception("stored responses: background write failed")

    async def _flush_held(self) -> None:
        batch = list(self._held.values())
        await self._write(batch)
        for stored in batch:
            self._held.pop(stored.id, None)
        self._down_until = 0.0
        if not self._healthy:
            self._healthy = True
            log.warning("sql available again; %d held responses stored", len(batch))

    async def prune(self) -> int:
        cutoff = time.time() - self._config.response_retention_days * 86_400
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(responses).where(responses.c.created_at < cutoff))
        return int(result.rowcount or 0)


def _row(stored: StoredResponse) -> dict[str, Any]:
    return {
        "id": stored.id,
        "tenant": stored.tenant,
        "created_at": stored.created_at,
        "previous_response_id": stored.previous_response_id,
        "input_items": jsonutil.dumps(stored.input_items).decode(),
        "response": jsonutil.dumps(stored.response).decode(),
    }


def _stored(row: Row[Any]) -> StoredResponse:
    return StoredResponse(
        id=row.id,
        tenant=row.tenant,
        created_at=row.created_at,
        previous_response_id=row.previous_response_id,
        input_items=jsonutil.loads(row.input_items),
        response=jsonutil.loads(row.response),
    )


def _dialect_insert(engine: AsyncEngine) -> Any:
    """The INSERT with ON CONFLICT of the engine's dialect (both spell it the same)."""
    return sqlite.insert if is_sqlite(str(engine.url)) else postgresql.insert
