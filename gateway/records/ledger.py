"""Reading the system of record: the spend ledger (usage report, budget floors) and the
request log (what happened to a request). Admin paths and background tasks only: the
request path reads `LedgerSpend.floor`, a dict kept in memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import jsonutil
from gateway.records.tables import requests, spend
from gateway.records.writer import SQL_ERRORS

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class LedgerRow:
    day: str
    key_id: str
    key_name: str
    team: str | None
    route: str
    requests: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_usd: Decimal


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def usage(self, days: Sequence[str]) -> list[LedgerRow]:
        """Per day, key, team and route (deployments and estimates summed)."""
        c = spend.c
        query = (
            select(
                c.day,
                c.key_id,
                func.max(c.key_name),
                c.team,
                c.route,
                func.sum(c.requests),
                func.sum(c.input_tokens),
                func.sum(c.cached_tokens),
                func.sum(c.output_tokens),
                func.sum(c.cost_usd),
            )
            .where(c.day.in_(list(days)))
            .group_by(c.day, c.key_id, c.team, c.route)
            .order_by(c.day, c.key_id, c.route)
        )
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            return [
                LedgerRow(
                    day,
                    key_id,
                    name,
                    team or None,
                    route,
                    int(n),
                    int(i),
                    int(ci),
                    int(o),
                    Decimal(cost),
                )
                for day, key_id, name, team, route, n, i, ci, o, cost in result
            ]

    async def spend_by_period(self, day: str, month: str) -> dict[tuple[str, str], Decimal]:
        """(key id, budget period id) -> USD spent, for the periods current today:
        `d<day>`, `m<month>` and `total` (ids as `gateway.limits` names them)."""
        c = spend.c
        by_key: dict[tuple[str, str], Decimal] = {}
        queries: list[tuple[str, Select[Any]]] = [
            (f"d{day}", select(c.key_id, func.sum(c.cost_usd)).where(c.day == day)),
            (f"m{month}", select(c.key_id, func.sum(c.cost_usd)).where(c.day.like(f"{month}-%"))),
            ("total", select(c.key_id, func.sum(c.cost_usd))),
        ]
        async with self._engine.connect() as conn:
            for period, query in queries:
                for key_id, total in await conn.execute(query.group_by(c.key_id)):
                    by_key[key_id, period] = Decimal(total or 0)
        return by_key


class RequestLog:
    """`GET /admin/requests...` and `gateway requests`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, request_id: str) -> list[dict[str, Any]]:
        """Every row with this x-request-id (a client may have reused one), oldest first."""
        query = select(requests).where(requests.c.request_id == request_id)
        return await self._rows(query.order_by(requests.c.ts))

    async def search(
        self,
        key: str | None = None,
        since_s: float | None = None,
        until_s: float | None = None,
        status: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first. `key`: a key id or name; `status`: exact, or a class (4 = 4xx)."""
        c = requests.c
        query = select(requests)
        if key is not None:
            query = query.where((c.key_id == key) | (c.key_name == key))
        if since_s is not None:
            query = query.where(c.ts >= since_s)
        if until_s is not None:
            query = query.where(c.ts < until_s)
        if status is not None:
            if status < 10:
                query = query.where(c.status >= status * 100, c.status < status * 100 + 100)
            else:
                query = query.where(c.status == status)
        return await self._rows(query.order_by(c.ts.desc()).limit(limit))

    async def _rows(self, query: Select[Any]) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            # str(): the names are SQLAlchemy's quoted_name, a str subclass orjson refuses
            return [public_request({str(k): v for k, v in row._mapping.items()}) for row in result]


def parse_moment(text: str) -> float:
    """Unix seconds, or an ISO 8601 date or time (UTC unless it says otherwise);
    ValueError for anything else."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def public_request(row: dict[str, Any]) -> dict[str, Any]:
    """A request-log row as the admin API shows it."""
    failed = row.pop("failed_attempts")
    row["failed_attempts"] = jsonutil.loads(failed) if failed else []
    for name in ("request_payload", "response_payload"):
        text = row.get(name)
        row[name] = jsonutil.loads(text) if text else None
    row["object"] = "gateway.request"
    return row


class LedgerSpend:
    """What each key has spent in its current budget periods, per the ledger, kept in
    memory and refreshed every `interval_s` in the background. The limit stores seed a
    budget's counter with it whenever the counter is new (a fresh, flushed or evicting
    Redis, a restarted gateway without Redis): the budget is then checked against the
    ledger, not against what the cache happened to keep."""

    def __init__(self, ledger: Ledger, interval_s: float) -> None:
        self._ledger = ledger
        self._interval_s = interval_s
        self._spent: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def floor(self, key_id: str, period: str) -> float:
        return self._spent.get((key_id, period), 0.0)

    async def refresh(self) -> bool:
        now = datetime.now(UTC)
        day, month = f"{now:%Y-%m-%d}", f"{now:%Y-%m}"
        try:
            spent = await self._ledger.spend_by_period(day, month)
        except SQL_ERRORS:
            return False  # the writer logs SQL outages; the last copy stays
        self._spent = {key: float(usd) for key, usd in spent.items()}
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-spend")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:  # a bug, not an outage: logged, and the refresh goes on
                log.exception("ledger spend: refresh failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
