"""The request log and the spend ledger, written in batches off the request path.

`RequestRecords.add` is all a request does: it appends its finished context to a
bounded buffer. A background task, every `database.flush_interval_s`, turns up to
`batch_rows` of them into rows and writes them in one transaction:

1. the batch's id (`gateway_record_batches`, `INSERT ... ON CONFLICT DO NOTHING`): when
   it is there already, the batch was written before and nothing else is done;
2. the request-log rows (one `executemany`);
3. their sums per day, key, team, route, deployment and estimated flag, added to the
   ledger (`INSERT ... ON CONFLICT DO UPDATE`).

The batch (its id and its rows) is made once and retried as it is until the
transaction commits: a batch whose commit succeeded but whose answer was lost writes
nothing the second time, so it never bills twice. (Plain `executemany`s, not one
`INSERT ... RETURNING` per row set: the drivers cache one prepared statement for them,
where a multi-row VALUES of each batch size would be a statement of its own.)

While SQL is unreachable the rows wait (one log line per outage;
`gateway_records_pending` says how many); past `buffer_max_rows` new ones are dropped
and counted (`gateway_records_dropped`).
What a replica loses if it dies during an outage is what its buffer held: at most
`buffer_max_rows` requests (the README says so).

Costs are recomputed here in exact decimals from the deployment's prices
(`exact_cost_usd`), so the ledger's sums are exact; the float on the context is what
the headers and metrics show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import jsonutil
from gateway.config import DatabaseConfig, Deployment, exact_cost_usd
from gateway.context import RequestContext
from gateway.ids import new_id
from gateway.records.db import is_sqlite
from gateway.records.tables import record_batches, requests, spend
from gateway.telemetry import Metrics

log = logging.getLogger("gateway")

_PRUNE_EVERY_S = 3600.0
_RETRY_MAX_S = 5.0
_SUMMED = ("requests", "input_tokens", "cached_tokens", "output_tokens", "cost_usd")
SQL_ERRORS = (SQLAlchemyError, OSError, asyncio.TimeoutError)


@dataclass(slots=True)
class _Finished:
    ctx: RequestContext
    ended_at: float  # wall clock, Unix seconds
    latency_s: float


class RequestRecords:
    def __init__(
        self,
        engine: AsyncEngine,
        config: DatabaseConfig,
        deployments: Mapping[str, Deployment],
        metrics: Metrics,
    ) -> None:
        self._engine = engine
        self._config = config
        self._deployments = deployments
        self._metrics = metrics
        self._insert = _dialect_insert(engine)
        self._buffer: deque[_Finished] = deque()
        self._batch: list[dict[str, Any]] = []  # rows made, not committed yet
        self._batch_id = ""
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._pruned_at = 0.0

    # -- the request path ---------------------------------------------------------------

    def add(self, ctx: RequestContext) -> None:
        """Called once per finished request: an append, nothing else."""
        if len(self._buffer) >= self._config.buffer_max_rows:
            self._metrics.records_dropped.inc()
            return
        self._buffer.append(_Finished(ctx, time.time(), ctx.elapsed_s()))

    # -- the background writer ----------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="request-records")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stops the writer, then writes what is left (bounded by `timeout_s`)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(timeout_s):
                while self.pending() and await self.flush():
                    pass
        except TimeoutError:
            pass
        if self.pending():
            log.warning("request records: %d rows not written at shutdown", self.pending())

    def pending(self) -> int:
        return len(self._buffer) + len(self._batch)

    async def _run(self) -> None:
        delay_s = self._config.flush_interval_s
        while True:
            await asyncio.sleep(delay_s)
            ok = True
            while ok and self.pending():
                ok = await self.flush()
            delay_s = self._config.flush_interval_s if ok else _RETRY_MAX_S
            if ok and time.monotonic() - self._pruned_at > _PRUNE_EVERY_S:
                await self._prune()

    async def flush(self) -> bool:
        """Writes one batch; False when SQL failed (the batch is kept for the retry)."""
        if not self._batch:
            self._batch = [self._row(self._buffer.popleft()) for _ in self._take()]
            self._batch_id = new_id()
        if not self._batch:
            return True
        try:
            async with self._engine.begin() as conn:
                await self._write(conn, self._batch_id, self._batch)
        except SQL_ERRORS as exc:
            self._failed("write", exc)
            self._metrics.records_pending.set(self.pending())
            return False
        self._metrics.records_written.inc(len(self._batch))
        self._batch = []
        self._metrics.records_pending.set(self.pending())
        self._recovered()
        return True

    def _take(self) -> range:
        return range(min(len(self._buffer), self._config.batch_rows))

    async def _write(
        self, conn: AsyncConnection, batch_id: str, rows: Sequence[dict[str, Any]]
    ) -> None:
        mark = self._insert(record_batches).on_conflict_do_nothing(index_elements=["id"])
        marked = await conn.execute(mark, {"id": batch_id, "written_at": time.time()})
        if marked.rowcount == 0:
            return  # this batch committed before; its answer was lost
        await conn.execute(insert(requests), list(rows))
        sums = ledger_sums(rows)
        if not sums:
            return
        upsert = self._insert(spend)
        keys = [c.name for c in spend.primary_key.columns]
        added = {name: spend.c[name] + upsert.excluded[name] for name in _SUMMED}
        added["key_name"] = upsert.excluded.key_name
        await conn.execute(upsert.on_conflict_do_update(index_elements=keys, set_=added), sums)

    def _row(self, item: _Finished) -> dict[str, Any]:
        ctx, usage = item.ctx, item.ctx.usage
        started = item.ended_at - item.latency_s
        return {
            "id": new_id(),
            "request_id": ctx.request_id,
            "ts": started,
            "day": utc_day(started),
            "endpoint": ctx.endpoint,
            "key_id": ctx.key_id,
            "key_name": ctx.key_name,
            "team": ctx.team,
            "route": ctx.route,
            "policy": ctx.policy,
            "deployment": ctx.deployment_id,
            "provider": ctx.provider,
            "model": ctx.model,
            "status": ctx.status,
            "error_code": ctx.error_code,
            "attempts": ctx.attempts,
            "failed_attempts": (
                jsonutil.dumps(ctx.failed_attempts).decode() if ctx.failed_attempts else None
            ),
            "stream": ctx.stream,
            "stream_outcome": ctx.stream_outcome,
            "cache": ctx.cache,
            "input_tokens": usage.prompt_tokens if usage else None,
            "cached_tokens": usage.cached_tokens if usage else None,
            "output_tokens": usage.completion_tokens if usage else None,
            "usage_estimated": usage.estimated if usage else None,
            "cost_usd": self._cost(ctx),
            "latency_ms": round(item.latency_s * 1000, 3),
            "ttft_ms": round(ctx.ttft_s * 1000, 3) if ctx.ttft_s is not None else None,
        }

    def _cost(self, ctx: RequestContext) -> Decimal | None:
        if ctx.cost_usd is None:
            return None
        d = self._deployments.get(ctx.deployment_id or "")
        if ctx.usage is None or d is None or ctx.cache == "HIT":
            return Decimal(repr(ctx.cost_usd))
        u = ctx.usage
        return exact_cost_usd(
            u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens, d.prices
        )

    async def _prune(self) -> None:
        self._pruned_at = time.monotonic()
        cutoff = time.time() - self._config.request_log_retention_days * 86_400
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(requests).where(requests.c.ts < cutoff))
                done = record_batches.c.written_at < cutoff
                await conn.execute(delete(record_batches).where(done))
        except SQL_ERRORS as exc:
            self._failed("prune", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._metrics.records_errors.labels(operation).inc()
        if self._healthy:
            self._healthy = False
            log.warning(
                "sql unavailable (%s during %s); request records wait in memory (%d)",
                type(exc).__name__,
                operation,
                self.pending(),
            )

    def _recovered(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.warning("sql available again; request records written")


def ledger_sums(rows: Any) -> list[dict[str, Any]]:
    """The ledger rows that `rows` (request-log rows) add up to: requests with usage (an
    answer that was paid for) and cache hits (a request, no tokens, no cost); refusals
    and failures are in the request log only."""
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        hit = row["cache"] == "HIT"
        if (row["input_tokens"] is None and not hit) or row["route"] is None:
            continue
        key = (
            row["day"],
            row["key_id"] or "anonymous",
            row["team"] or "",
            row["route"],
            row["deployment"] or "",
            bool(row["usage_estimated"]),
        )
        entry = sums.get(key)
        if entry is None:
            entry = sums[key] = {
                "day": key[0],
                "key_id": key[1],
                "team": key[2],
                "route": key[3],
                "deployment": key[4],
                "estimated": key[5],
                "key_name": row["key_name"] or key[1],
                "requests": 0,
                "input_tokens": 0,
                "cached_tokens": 0,
                "output_tokens": 0,
                "cost_usd": Decimal(0),
            }
        entry["requests"] += 1
        if hit:
            continue  # served from the cache: no tokens paid for, no cost
        entry["input_tokens"] += row["input_tokens"]
        entry["cached_tokens"] += row["cached_tokens"] or 0
        entry["output_tokens"] += row["output_tokens"] or 0
        entry["cost_usd"] += row["cost_usd"] or Decimal(0)
    return list(sums.values())


def utc_day(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d")


def _dialect_insert(engine: AsyncEngine) -> Any:
    """The INSERT with ON CONFLICT of the engine's dialect (both spell it the same)."""
    return sqlite.insert if is_sqlite(str(engine.url)) else postgresql.insert
