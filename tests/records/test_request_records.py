"""The request-log and ledger writer against real databases (an SQLite file and a real
PostgreSQL): exact decimal sums, idempotent batches, and an outage that loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from gateway.config import DatabaseConfig, Deployment
from gateway.config.pricing import Prices
from gateway.context import RequestContext
from gateway.records import Ledger, RequestLog, RequestRecords, create_engine, tables
from gateway.records.migrate import upgrade
from gateway.telemetry import Metrics
from gateway.types import Usage
from tests.pgserver import PostgresServer

PRICES = Prices(0.15, 0.6, cached_input_per_mtok_usd=0.075)
DEPLOYMENT = Deployment(
    id="openai/gpt-4o-mini",
    name="gpt-4o-mini",
    provider="openai",
    kind="openai",
    model="gpt-4o-mini",
    mode="chat",
    prices=PRICES,
    context_window_tokens=128_000,
    max_output_tokens=None,
    capabilities=frozenset(),
)


def finished(
    request_id: str,
    usage: Usage | None,
    *,
    key: str = "k1",
    status: int = 200,
    cache: str | None = None,
) -> RequestContext:
    ctx = RequestContext(request_id=request_id, endpoint="chat")
    ctx.route, ctx.policy, ctx.deployment_id = "gpt-4o-mini", "fallback", DEPLOYMENT.id
    ctx.provider, ctx.model, ctx.status, ctx.attempts = "openai", "gpt-4o-mini", status, 1
    ctx.key_id, ctx.key_name, ctx.team, ctx.cache = key, f"name-{key}", "blue", cache
    ctx.usage = usage
    if usage is not None:
        ctx.cost_usd = 0.0 if cache == "HIT" else 1.0  # the float is not what the ledger uses
    ctx.failed_attempts = ["openai/x: 503"] if status == 200 else None
    return ctx


def writer(config: DatabaseConfig) -> RequestRecords:
    metrics = Metrics(CollectorRegistry())
    return RequestRecords(create_engine(config), config, {DEPLOYMENT.id: DEPLOYMENT}, metrics)


async def ledger_totals(records: RequestRecords) -> tuple[int, int, int, int, Decimal]:
    c = tables.spend.c
    async with records._engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    func.sum(c.requests),
                    func.sum(c.input_tokens),
                    func.sum(c.cached_tokens),
                    func.sum(c.output_tokens),
                    func.sum(c.cost_usd),
                )
            )
        ).one()
    return (
        int(row[0] or 0),
        int(row[1] or 0),
        int(row[2] or 0),
        int(row[3] or 0),
        Decimal(row[4] or 0),
    )


async def logged(records: RequestRecords) -> int:
    async with records._engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(tables.requests)) or 0)


def test_rows_and_ledger_sums_are_exact(database: DatabaseConfig) -> None:
    async def main() -> None:
        await upgrade(database)
        # Batches of 64 rows: the later ones add to ledger rows the first one made.
        records = writer(database.model_copy(update={"batch_rows": 64}))
        usages = [Usage(1000 + i, 37 * i, cached_tokens=3 * i) for i in range(200)]
        for i, usage in enumerate(usages):
            records.add(finished(f"r{i}", usage, key=f"k{i % 3}"))
        records.add(finished("hit", Usage(5, 5), cache="HIT"))  # logged, costs nothing
        records.add(finished("refused", None, status=429))  # logged, not in the ledger
        while records.pending():
            assert await records.flush()
        async with records._engine.connect() as conn:
            batches = select(func.count()).select_from(tables.record_batches)
            assert await conn.scalar(batches) == 4  # 64 + 64 + 64 + 10 rows
        n, inp, cached, out, cost = await ledger_totals(records)
        assert n == 201  # the cache hit is a request, with no tokens paid for
        assert (inp, cached, out) == (
            sum(u.prompt_tokens for u in usages),
            sum(u.cached_tokens for u in usages),
            sum(u.completion_tokens for u in usages),
        )
        mtok = Decimal(1_000_000)
        expected = sum(
            (
                (u.prompt_tokens - u.cached_tokens) * Decimal("0.15")
                + u.cached_tokens * Decimal("0.075")
                + u.completion_tokens * Decimal("0.6")
            )
            / mtok
            for u in usages
        )
        assert cost == expected  # exact: no float anywhere in the sum
        assert await logged(records) == 202
        rows = await RequestLog(records._engine).get("r7")
        assert rows[0]["failed_attempts"] == ["openai/x: 503"]
        assert rows[0]["input_tokens"] == 1007 and rows[0]["key_name"] == "name-k1"
        assert Decimal(rows[0]["cost_usd"]) > 0
        usage = await Ledger(records._engine).usage([rows[0]["day"]])
        assert sum(r.requests for r in usage) == 201
        await records.aclose()
        await records._engine.dispose()

    asyncio.run(main())


def test_each_row_has_the_utc_day_it_started_on(tmp_path: pytest.TempPathFactory) -> None:
    """The writer keeps the last row's day; a request that started before midnight
    (a long one, finished after it) still gets the day before, in log and ledger."""
    config = DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/g.db")

    async def main() -> None:
        await upgrade(config)
        records = writer(config)
        since_midnight_s = time.time() % 86_400
        for name, age_s in (("today", 0.0), ("yesterday", since_midnight_s + 5), ("now", 0.0)):
            ctx = finished(name, Usage(10, 1))
            ctx.started = time.perf_counter() - age_s  # how long ago it started
            records.add(ctx)
        assert await records.flush()
        log = RequestLog(records._engine)
        days = {name: (await log.get(name))[0]["day"] for name in ("today", "yesterday", "now")}
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        if today != days["now"]:  # midnight came while the test ran: too close to call
            pytest.skip("the UTC day changed during the test")
        assert days == {"today": today, "yesterday": yesterday, "now": today}
        ledger = await Ledger(records._engine).usage([yesterday, today])
        assert sorted((r.day, r.requests) for r in ledger) == [(yesterday, 1), (today, 2)]
        await records.aclose()
        await records._engine.dispose()

    asyncio.run(main())


def test_a_batch_written_twice_bills_once(database: DatabaseConfig) -> None:
    """The commit went through but its answer was lost: the writer sends the same rows
    again, and neither the log nor the ledger counts them twice."""

    async def main() -> None:
        await upgrade(database)
        records = writer(database)
        for i in range(50):
            records.add(finished(f"r{i}", Usage(100, 10)))
        batch = records._make_batch()
        records._batch = batch
        assert await records.flush()
        first = await ledger_totals(records)
        records._batch = batch  # the retry of a batch that had committed
        assert await records.flush()
        assert await ledger_totals(records) == first
        assert first[0] == 50 and await logged(records) == 50
        await records.aclose()
        await records._engine.dispose()

    asyncio.run(main())


def test_sqlite_stores_nones_as_null_and_bools_as_integers(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """The engine registers an sqlite3 adapter for None (a faster bind) and the writer
    binds booleans as 1 and 0: what is stored is what sqlite3 stores without either,
    SQL NULL and the integers 1 and 0."""
    path = f"{tmp_path}/g.db"
    config = DatabaseConfig(url=f"sqlite+aiosqlite:///{path}")

    async def main() -> None:
        await upgrade(config)
        records = writer(config)
        streamed = finished("streamed", Usage(3, 4, estimated=True))
        streamed.stream, streamed.ttft_s, streamed.stream_outcome = True, 0.25, "complete"
        records.add(streamed)
        records.add(finished("refused", None, status=429))
        assert await records.flush()
        await records.aclose()
        await records._engine.dispose()

    asyncio.run(main())
    columns = "stream, usage_estimated, error_code, input_tokens, cost_usd, ttft_ms"
    typed = ", ".join(f"typeof({c}), {c}" for c in columns.split(", "))
    with sqlite3.connect(path) as conn:
        found = dict(
            (row[0], row[1:])
            for row in conn.execute(f"SELECT request_id, {typed} FROM gateway_requests")
        )
    assert found["streamed"] == (
        ("integer", 1, "integer", 1, "null", None) + ("integer", 3, "real", 1.0, "real", 250.0)
    )
    assert found["refused"] == (
        ("integer", 0, "null", None, "null", None) + ("null", None, "null", None, "null", None)
    )


def test_plain_rows_and_rows_with_sparse_columns_are_stored_alike(
    database: DatabaseConfig,
) -> None:
    """Most rows are written without the columns that are NULL for them (no stream, no
    retry, no error, no payload); in one batch with rows that have them, every column
    of every row reads back as it was, booleans included."""
    plain = finished("plain", Usage(10, 20, estimated=True))
    plain.failed_attempts = None
    refused = finished("refused", None, status=429)
    streamed = finished("streamed", Usage(3, 4))
    streamed.stream, streamed.ttft_s, streamed.stream_outcome = True, 0.25, "complete"
    streamed.failed_attempts = None
    failed = finished("failed", None, status=502)
    failed.error_code, failed.failed_attempts = "upstream_error", ["openai/a: 502"]
    logged_payload = finished("payload", Usage(1, 2))
    logged_payload.failed_attempts = None
    logged_payload.payload_request = {"model": "gpt-4o-mini", "messages": []}
    logged_payload.payload_response = {"id": "chatcmpl-1"}
    contexts = [plain, streamed, refused, failed, logged_payload]

    async def main() -> dict[str, dict[str, object]]:
        await upgrade(database)
        records = writer(database)
        for ctx in contexts:
            records.add(ctx)
        assert records.pending() == 5
        assert await records.flush()
        assert records.pending() == 0 and records.written_rows == 5
        log = RequestLog(records._engine)
        found = {ctx.request_id: (await log.get(ctx.request_id))[0] for ctx in contexts}
        await records.aclose()
        await records._engine.dispose()
        return found

    found = asyncio.run(main())
    for ctx in contexts:
        row, usage = found[ctx.request_id], ctx.usage
        assert row["status"] == ctx.status and row["stream"] is ctx.stream
        assert row["key_name"] == ctx.key_name and row["deployment"] == ctx.deployment_id
        assert row["usage_estimated"] == (usage.estimated if usage else None)
        assert row["input_tokens"] == (usage.prompt_tokens if usage else None)
        assert row["error_code"] == ctx.error_code
        assert row["stream_outcome"] == ctx.stream_outcome
        assert row["failed_attempts"] == (ctx.failed_attempts or [])
        assert row["ttft_ms"] == (250.0 if ctx is streamed else None)
    assert found["plain"]["usage_estimated"] is True
    assert found["streamed"]["usage_estimated"] is False
    assert found["payload"]["request_payload"] == logged_payload.payload_request
    assert found["payload"]["response_payload"] == {"id": "chatcmpl-1"}
    assert found["plain"]["request_payload"] is None


def test_the_buffer_is_bounded(tmp_path: pytest.TempPathFactory) -> None:
    config = DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/g.db", buffer_max_rows=10)
    records = writer(config)
    for i in range(25):
        records.add(finished(f"r{i}", Usage(1, 1)))
    assert records.pending() == 10
    assert records._metrics.records_dropped._value.get() == 15


def test_postgres_down_then_back_loses_and_doubles_nothing(
    postgres_server: PostgresServer,
) -> None:
    config = DatabaseConfig(url=postgres_server.create_database("records_outage"))

    async def main() -> None:
        await upgrade(config)
        records = writer(config)
        for i in range(20):
            records.add(finished(f"a{i}", Usage(10, 1)))
        assert await records.flush()
        postgres_server.stop()
        try:
            for i in range(30):
                records.add(finished(f"b{i}", Usage(10, 1)))
            assert not await records.flush()  # kept, to be retried
            assert records.pending() == 30
        finally:
            postgres_server.start()
        while records.pending():
            assert await records.flush()
        assert (await ledger_totals(records))[:2] == (50, 500)
        assert await logged(records) == 50
        await records.aclose()
        await records._engine.dispose()

    asyncio.run(main())
