"""The request log and the spend ledger, written in batches off the request path.

`RequestRecords.add` is all a request does, after its answer has gone out: it makes
its request-log row (a tuple of plain values: the context and everything it holds can
be freed at once, and the garbage collector never walks the row) and adds its tokens
to its ledger group, in the open segment of a bounded buffer. Segments close at
`batch_rows` rows. A background task, every `database.flush_interval_s`, writes each
closed segment (and the open one) as a batch, in one transaction:

1. the batch's id (`gateway_record_batches`, `INSERT ... ON CONFLICT DO NOTHING`): when
   it is there already, the batch was written before and nothing else is done;
2. the request-log rows (see `_insert_log_rows`);
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
import functools
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from itertools import chain
from time import perf_counter
from typing import Any

import asyncpg
from sqlalchemy import TextClause, bindparam, delete, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import jsonutil
from gateway.config import DatabaseConfig, Deployment, exact_cost_usd
from gateway.context import RequestContext
from gateway.ids import new_id
from gateway.records.db import is_sqlite
from gateway.records.redact import redact
from gateway.records.tables import record_batches, requests, spend
from gateway.telemetry import Metrics

log = logging.getLogger("gateway")

_PRUNE_EVERY_S = 3600.0
_RETRY_MAX_S = 5.0
_SUMMED = ("requests", "input_tokens", "cached_tokens", "output_tokens", "cost_usd")
# What "SQL is unreachable" looks like. asyncpg raises some errors of its own unwrapped
# by SQLAlchemy: 57P03 "the database system is starting up" from connect, for one.
SQL_ERRORS = (
    SQLAlchemyError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


@dataclass(slots=True)
class _Spend:
    """One ledger row's sums within a batch (costs are priced per group, not per row)."""

    key_name: str
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    uncached_tokens: int = 0  # max(input - cached - cache write, 0), summed row by row
    output_tokens: int = 0
    unpriced_usd: float = 0.0  # rows whose deployment this replica does not know


@dataclass(slots=True)
class _Segment:
    """Rows not written yet, with the ledger sums of exactly those rows. A row whose
    `_SPARSE` columns are all NULL (most: an answer without a stream, a retry or an
    error) is kept without them, in `plain`: SQL NULL is their default, and sqlite3
    binds each None through its adapter registry (a tuple built, hashed and looked up
    per value), a fifth of the insert's instructions."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)  # in `_COLUMNS` order
    plain: list[tuple[Any, ...]] = field(default_factory=list)  # in `_PLAIN_COLUMNS` order
    spend: dict[tuple[Any, ...], _Spend] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    """Made once from a segment, then retried as it is until it commits."""

    id: str
    rows: list[tuple[Any, ...]]  # request-log rows, in `_COLUMNS` order
    plain: list[tuple[Any, ...]]  # request-log rows, in `_PLAIN_COLUMNS` order
    spend: list[dict[str, Any]]  # ledger rows

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.plain)


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
        self._pg = not is_sqlite(str(engine.url))
        self._max_rows = config.buffer_max_rows
        self._batch_rows = config.batch_rows
        self._day_starts, self._day = 0.0, utc_day(0.0)  # the UTC day of the last row
        self._segments: deque[_Segment] = deque([_Segment()])  # the last one is open
        self._buffered = 0  # rows in the segments
        self._batch: _Batch | None = None  # made, not committed yet
        self._flushing = asyncio.Lock()
        self.written_rows = 0  # rows committed since start
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._pruned_at = 0.0
        for operation in ("write", "prune"):
            metrics.records_errors.labels(operation)  # 0 until the first failure

    # -- the request path ---------------------------------------------------------------

    def add(self, ctx: RequestContext) -> None:
        """Called once per finished request: a row made and appended, nothing waited for."""
        if self._buffered >= self._max_rows:
            self._metrics.records_dropped.inc()
            return
        segment = self._segments[-1]
        if len(segment.rows) + len(segment.plain) >= self._batch_rows:
            segment = _Segment()
            self._segments.append(segment)
        latency_s = perf_counter() - ctx.started
        started = time.time() - latency_s
        if not self._day_starts <= started < self._day_starts + 86_400:
            self._day_starts = started // 86_400 * 86_400
            self._day = utc_day(started)
        day = self._day
        usage, failed, ttft_s = ctx.usage, ctx.failed_attempts, ctx.ttft_s
        row = (  # in _PLAIN_COLUMNS order; booleans as 1 and 0 (bound without an adapter)
            ctx.request_id,
            started,
            day,
            ctx.endpoint,
            ctx.key_id,
            ctx.key_name,
            ctx.team,
            ctx.route,
            ctx.policy,
            ctx.deployment_id,
            ctx.provider,
            ctx.model,
            ctx.status,
            ctx.attempts,
            1 if ctx.stream else 0,
            ctx.cache,
            usage.prompt_tokens if usage else None,
            usage.cached_tokens if usage else None,
            usage.completion_tokens if usage else None,
            (1 if usage.estimated else 0) if usage else None,
            ctx.cost_usd,
            latency_s * 1000,
        )
        if (
            ttft_s is None
            and not failed
            and ctx.error_code is None
            and ctx.stream_outcome is None
            and ctx.payload_request is None
        ):
            segment.plain.append(row)
        else:
            payloads = _NO_PAYLOADS if ctx.payload_request is None else _payloads(ctx)
            segment.rows.append(
                row
                + (  # the rest of _COLUMNS: _SPARSE
                    ctx.error_code,
                    jsonutil.dumps(failed).decode() if failed else None,
                    ctx.stream_outcome,
                    ttft_s * 1000 if ttft_s is not None else None,
                    payloads[0],
                    payloads[1],
                )
            )
        self._buffered += 1
        if ctx.route is not None and (usage is not None or ctx.cache == "HIT"):
            self._add_spend(segment.spend, ctx, day)

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

    async def drain(self, timeout_s: float) -> None:
        """Writes at least what is pending now (not what arrives meanwhile), bounded by
        `timeout_s`; gives up quietly when SQL is slow or down."""
        target = self.written_rows + self.pending()
        try:
            async with asyncio.timeout(timeout_s):
                while self.written_rows < target and self.pending() and await self.flush():
                    pass
        except TimeoutError:
            pass

    def pending(self) -> int:
        return self._buffered + (self._batch.size if self._batch else 0)

    async def _run(self) -> None:
        delay_s = self._config.flush_interval_s
        while True:
            await asyncio.sleep(delay_s)
            ok = True
            try:
                # What was pending at this tick, not what arrives while writing it: under
                # load that would be a stream of small batches, each a transaction.
                target = self.written_rows + self.pending()
                while ok and self.written_rows < target and self.pending():
                    ok = await self.flush()
            except Exception:  # a bug, not an outage: logged, and the writer goes on
                log.exception("request records: writing a batch failed")
                ok = False
            delay_s = self._config.flush_interval_s if ok else _RETRY_MAX_S
            if ok and time.monotonic() - self._pruned_at > _PRUNE_EVERY_S:
                await self._prune()

    async def flush(self) -> bool:
        """Writes one batch; False when SQL failed (the batch is kept for the retry). One
        flush at a time: the background task and an admin read may both ask."""
        async with self._flushing:
            return await self._flush_one()

    async def _flush_one(self) -> bool:
        if self._batch is None and self._buffered:
            self._batch = self._make_batch()
        batch = self._batch
        if batch is None:
            return True
        try:
            await self._write_batch(batch)
        except SQL_ERRORS as exc:
            self._failed("write", exc)
            self._metrics.records_pending.set(self.pending())
            return False
        self._metrics.records_written.inc(batch.size)
        self.written_rows += batch.size
        self._batch = None
        self._metrics.records_pending.set(self.pending())
        self._recovered()
        return True

    async def _write_batch(self, batch: _Batch) -> None:
        """One batch in one transaction; once more on new connections if that failed. A
        pooled connection that the server ended while idle (a restart, a failover) fails
        at its first use after the server is back, which is not an outage; when SQL
        really is away the second try fails too, as fast (the batch id makes a retry of
        a batch that did commit a no-op)."""
        try:
            async with self._engine.begin() as conn:
                await self._write(conn, batch)
        except SQL_ERRORS:
            await self._engine.dispose()  # every pooled connection may be one of those
            async with self._engine.begin() as conn:
                await self._write(conn, batch)

    def _make_batch(self) -> _Batch:
        segment = self._segments.popleft()
        if not self._segments:
            self._segments.append(_Segment())
        self._buffered -= len(segment.rows) + len(segment.plain)
        spend = [self._ledger_row(key, group) for key, group in segment.spend.items()]
        return _Batch(new_id(), segment.rows, segment.plain, spend)

    async def _write(self, conn: AsyncConnection, batch: _Batch) -> None:
        marked = await conn.execute(_MARK_BATCH, {"id": batch.id, "written_at": time.time()})
        if marked.rowcount == 0:
            return  # this batch committed before; its answer was lost
        for columns, rows in ((_COLUMNS, batch.rows), (_PLAIN_COLUMNS, batch.plain)):
            if rows:
                await self._insert_log_rows(conn, columns, rows)
        if batch.spend:
            await conn.execute(_ADD_SPEND, batch.spend)

    async def _insert_log_rows(
        self, conn: AsyncConnection, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        """Rows of one shape (`columns`), inserted in the order they came (a batch's
        plain rows after its others: readers order by `ts`).

        No per-row work in SQLAlchemy or the driver. PostgreSQL: the rows as one JSON
        parameter of one statement (the server unpacks it). SQLite: multi-row VALUES of a
        few fixed sizes (one cached statement each), because sqlite3 gives up the GIL
        around every statement it steps, and aiosqlite steps in its own thread: one row per
        statement (an executemany) is a GIL hand-off per row, which under load cost more
        than the insert; JSON unpacked by SQLite re-parses each row per column."""
        if self._pg:
            rows_json = jsonutil.dumps(rows).decode()
            await conn.exec_driver_sql(_pg_insert_rows_sql(columns), (rows_json,))
            return
        # aiosqlite's own execute_insert: one hand-off to its thread per chunk, where
        # SQLAlchemy's cursor makes three (open, execute, close). Same connection, so
        # the same transaction.
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None  # a connection checked out of the pool is open
        start = 0
        for size in _chunks(len(rows)):
            chunk = rows[start : start + size]
            start += size
            flat = tuple(chain.from_iterable(chunk))
            await driver.execute_insert(_sqlite_insert_rows_sql(columns, size), flat)

    def _add_spend(
        self, sums: dict[tuple[Any, ...], _Spend], ctx: RequestContext, day: str
    ) -> None:
        """Requests with usage (an answer that was paid for) and cache hits (a request, no
        tokens, no cost) count in the ledger; refusals and failures are only logged."""
        hit, usage = ctx.cache == "HIT", ctx.usage
        estimated = usage is not None and usage.estimated and not hit
        key_id = ctx.key_id or "anonymous"
        key = (day, key_id, ctx.team or "", ctx.route or "", ctx.deployment_id or "", estimated)
        group = sums.get(key)
        if group is None:
            group = sums[key] = _Spend(ctx.key_name or key_id)
        group.requests += 1
        if hit or usage is None:
            return
        prompt, cached, written = usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens
        group.input_tokens += prompt
        group.cached_tokens += cached
        group.cache_write_tokens += written
        # max(prompt - max(cached, 0) - max(written, 0), 0), without three calls
        uncached = prompt - (cached if cached > 0 else 0) - (written if written > 0 else 0)
        if uncached > 0:
            group.uncached_tokens += uncached
        group.output_tokens += usage.completion_tokens
        if ctx.deployment_id not in self._deployments:
            group.unpriced_usd += ctx.cost_usd or 0.0

    def _ledger_row(self, key: tuple[Any, ...], group: _Spend) -> dict[str, Any]:
        day, key_id, team, route, deployment, estimated = key
        d = self._deployments.get(deployment)
        if d is None:
            cost = Decimal(repr(group.unpriced_usd))
        else:  # linear in each kind of token: priced once per group, exactly
            cost = exact_cost_usd(
                group.uncached_tokens + max(group.cached_tokens, 0) + group.cache_write_tokens,
                group.output_tokens,
                group.cached_tokens,
                group.cache_write_tokens,
                d.prices,
            )
        return {
            "day": day,
            "key_id": key_id,
            "team": team,
            "route": route,
            "deployment": deployment,
            "estimated": estimated,
            "key_name": group.key_name,
            "requests": group.requests,
            "input_tokens": group.input_tokens,
            "cached_tokens": group.cached_tokens,
            "output_tokens": group.output_tokens,
            "cost_usd": cost,
        }

    async def _prune(self) -> None:
        self._pruned_at = time.monotonic()
        cutoff = time.time() - self._config.request_log_retention_days * 86_400
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(requests).where(requests.c.ts < cutoff))
                stale = time.time() - self._config.payload_retention_days * 86_400
                kept = requests.c.ts < stale, requests.c.request_payload.is_not(None)
                emptied = {"request_payload": None, "response_payload": None}
                await conn.execute(update(requests).where(*kept).values(**emptied))
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


_PLAIN_COLUMNS = (  # of a request-log row without its `_SPARSE` ones; `id` is the database's
    "request_id",
    "ts",
    "day",
    "endpoint",
    "key_id",
    "key_name",
    "team",
    "route",
    "policy",
    "deployment",
    "provider",
    "model",
    "status",
    "attempts",
    "stream",
    "cache",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "usage_estimated",
    "cost_usd",
    "latency_ms",
)
_SPARSE = (  # NULL for most requests
    "error_code",
    "failed_attempts",
    "stream_outcome",
    "ttft_ms",
    "request_payload",
    "response_payload",
)
_COLUMNS = _PLAIN_COLUMNS + _SPARSE  # of a request-log row
_NO_PAYLOADS = (None, None)


def _payloads(ctx: RequestContext) -> tuple[str | None, str | None]:
    """A `log_payloads` route's body and answer as redacted JSON text. A stream's answer
    is assembled from its chunks (None when the stream did not complete)."""
    answer = ctx.payload_response
    result = getattr(answer, "result", None)
    if callable(result):
        answer = result()
    request = redact(jsonutil.dumps(ctx.payload_request).decode())
    return request, redact(jsonutil.dumps(answer).decode()) if answer is not None else None


@functools.lru_cache(maxsize=2)
def _pg_insert_rows_sql(columns: tuple[str, ...]) -> str:
    """The request-log INSERT of rows given as one JSON array (arrays in `columns`
    order), unpacked by PostgreSQL. Booleans arrive as 1 and 0 (`'1'::boolean`)."""
    casts = [_PG_CASTS[type(requests.c[name].type).__name__] for name in columns]
    values = ", ".join(f"(r->>{i}){cast}" for i, cast in enumerate(casts))
    return (
        f"INSERT INTO {requests.name} ({', '.join(columns)}) "
        f"SELECT {values} FROM json_array_elements($1::json) AS r"
    )


def _mark_batch_sql() -> TextClause:
    """Inserts a batch's id, or nothing when it is there (the batch was written before)."""
    return text(
        f"INSERT INTO {record_batches.name} (id, written_at) VALUES (:id, :written_at) "
        "ON CONFLICT (id) DO NOTHING"
    ).bindparams(*(bindparam(c.name, type_=c.type) for c in record_batches.columns))


def _add_spend_sql() -> TextClause:
    """Adds a batch's ledger sums to their rows (made when new). Text, typed like the
    table's columns, rather than the dialects' `insert().on_conflict_do_update()`:
    SQLAlchemy does not cache the compiled form of those, and compiling the two
    statements took about a millisecond of every flush."""
    names = [c.name for c in spend.columns]
    keys = ", ".join(c.name for c in spend.primary_key.columns)
    added = ", ".join(f"{n} = {spend.name}.{n} + excluded.{n}" for n in _SUMMED)
    return text(
        f"INSERT INTO {spend.name} ({', '.join(names)}) "
        f"VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT ({keys}) DO UPDATE SET {added}, key_name = excluded.key_name"
    ).bindparams(*(bindparam(c.name, type_=c.type) for c in spend.columns))


_MARK_BATCH = _mark_batch_sql()
_ADD_SPEND = _add_spend_sql()

_SQLITE_CHUNK_SIZES = (512, 128, 32, 8, 2, 1)  # 512 x 28 parameters < SQLite's 32,766


def _chunks(count: int) -> list[int]:
    """`count` rows as chunks of the fixed sizes, largest first."""
    sizes = []
    for size in _SQLITE_CHUNK_SIZES:
        while count >= size:
            sizes.append(size)
            count -= size
    return sizes


@functools.lru_cache(maxsize=2 * len(_SQLITE_CHUNK_SIZES))
def _sqlite_insert_rows_sql(columns: tuple[str, ...], rows: int) -> str:
    one = "(" + ", ".join("?" for _ in columns) + ")"
    values = ", ".join(one for _ in range(rows))
    return f"INSERT INTO {requests.name} ({', '.join(columns)}) VALUES {values}"


_PG_CASTS = {  # text out of JSON, into each column's type
    "String": "",
    "Text": "",
    "Integer": "::integer",
    "BigInteger": "::bigint",
    "Double": "::double precision",
    "Boolean": "::boolean",
}


@functools.lru_cache(maxsize=4)
def _day_of(day_index: int) -> str:
    return datetime.fromtimestamp(day_index * 86_400, UTC).strftime("%Y-%m-%d")


def utc_day(unix_s: float) -> str:
    """ "YYYY-MM-DD" in UTC (a UTC day is 86,400 Unix seconds); formatted once per day."""
    return _day_of(int(unix_s // 86_400))
