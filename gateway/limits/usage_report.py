"""The spend report: requests, tokens and cost per key, team, route and UTC day.

Rows come from the spend ledger in SQL (`gateway.records`), the system of record:
Redis may be restarted, flushed or evicting without changing the report. Choosing the
days, grouping and rendering are pure; `run_usage` is the `gateway usage` command,
which reads the database directly (no gateway needed).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta

from gateway import jsonutil
from gateway.config import DatabaseConfig, GatewayConfig
from gateway.limits.store import UsageRow
from gateway.records import SQL_ERRORS, Ledger, LedgerRow, create_engine

MAX_DAYS = 400
GROUPS = ("key", "team", "route", "day")


class ReportRangeError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_day(text: str, param: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReportRangeError(f"{param} must be a date like 2025-01-31.", param) from None


def report_days(
    day: str | None,
    since: str | None,
    until: str | None,
    today: date | None = None,
    month: str | None = None,
) -> list[str]:
    """The UTC days to report: one `day`, `since`..`until` (default today), or a `month`
    (YYYY-MM, or "current": month to date), oldest first."""
    today = today or datetime.now(UTC).date()
    if month is not None:
        if day is not None or since is not None or until is not None:
            raise ReportRangeError("Give either month, day or since/until.", "month")
        first = today.replace(day=1) if month == "current" else _month_start(month)
        following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
        last = min(today, following - timedelta(days=1))
        if first > last:
            raise ReportRangeError("month is in the future.", "month")
        return _days(first, last)
    if day is not None:
        if since is not None or until is not None:
            raise ReportRangeError("Give either day or since/until, not both.", "day")
        return [parse_day(day, "day").isoformat()]
    last = parse_day(until, "until") if until is not None else today
    first = parse_day(since, "since") if since is not None else last
    if first > last:
        raise ReportRangeError("since is after until.", "since")
    if (last - first).days + 1 > MAX_DAYS:
        raise ReportRangeError(f"At most {MAX_DAYS} days per report.", "since")
    return _days(first, last)


def _days(first: date, last: date) -> list[str]:
    """Every UTC day from `first` to `last`, both included, as YYYY-MM-DD."""
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _month_start(text: str) -> date:
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise ReportRangeError("month must be like 2025-01, or current.", "month") from None


def usage_rows(rows: Sequence[LedgerRow]) -> list[UsageRow]:
    """Ledger rows as the report shows them (cost in float USD, summed exactly in SQL)."""
    return [
        UsageRow(
            r.day,
            r.key_id,
            r.key_name,
            r.team,
            r.route,
            r.requests,
            r.input_tokens,
            r.output_tokens,
            float(r.cost_usd),
        )
        for r in rows
    ]


def _label(row: UsageRow, by: str) -> tuple[str, ...]:
    if by == "key":
        return (row.key_id, row.key, row.team or "")
    if by == "team":
        return (row.team or "",)
    if by == "route":
        return (row.route,)
    return (row.day,)


_LABEL_NAMES = {"key": ("key_id", "key", "team"), "team": ("team",), "route": ("route",)}


def group(rows: Sequence[UsageRow], by: str) -> list[dict[str, object]]:
    """Totals per value of `by` (key | team | route | day), largest cost first."""
    totals: dict[tuple[str, ...], list[float]] = {}
    for row in rows:
        cell = totals.setdefault(_label(row, by), [0, 0, 0, 0.0])
        cell[0] += row.requests
        cell[1] += row.input_tokens
        cell[2] += row.output_tokens
        cell[3] += row.cost_usd
    names = _LABEL_NAMES.get(by, ("day",))
    return [
        {
            **{n: (v or None) for n, v in zip(names, label, strict=True)},
            "requests": int(cell[0]),
            "input_tokens": int(cell[1]),
            "output_tokens": int(cell[2]),
            "cost_usd": cell[3],
        }
        for label, cell in sorted(totals.items(), key=lambda item: (-item[1][3], item[0]))
    ]


def total(rows: Sequence[UsageRow]) -> dict[str, object]:
    return {
        "requests": sum(r.requests for r in rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "cost_usd": sum(r.cost_usd for r in rows),
    }


def summarize(rows: Sequence[UsageRow], days: Sequence[str]) -> dict[str, object]:
    ordered = sorted(rows, key=lambda r: (r.day, r.key, r.route))
    return {
        "object": "usage_report",
        "since": days[0] if days else None,
        "until": days[-1] if days else None,
        "rows": [asdict(r) for r in ordered],
        **{f"by_{by}": group(ordered, by) for by in GROUPS},
        "total": total(ordered),
    }


def render_table(rows: Sequence[UsageRow], by: str | None) -> str:
    """A plain text table for `gateway usage` (every row, or totals per `by`)."""
    items: list[dict[str, object]]
    if by is None:
        items = [asdict(r) for r in sorted(rows, key=lambda r: (r.day, r.key, r.route))]
        columns = ["day", "key", "team", "route"]
    else:
        items = group(rows, by)
        columns = [c for c in _LABEL_NAMES.get(by, ("day",)) if c != "key_id"]
    columns += ["requests", "input_tokens", "output_tokens", "cost_usd"]
    items.append({"day": "TOTAL", "key": "TOTAL", "team": "", "route": "", **total(rows)})
    if by is not None:
        items[-1][columns[0]] = "TOTAL"
    cells = [[_cell(item.get(c)) for c in columns] for item in items]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def run_usage(
    config: GatewayConfig,
    days_asked: tuple[str | None, str | None, str | None, str | None],
    by: str | None,
    as_json: bool,
) -> int:
    """`gateway usage`: read the ledger straight from the database. `days_asked`: (day,
    since, until, month) as `report_days` takes them."""
    day, since, until, month = days_asked
    try:
        days = report_days(day, since, until, month=month)
    except ReportRangeError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    try:
        rows = asyncio.run(_read(config.database, days))
    except SQL_ERRORS as exc:
        sys.stderr.write(f"cannot read the database: {type(exc).__name__}\n")
        return 1
    if as_json:
        sys.stdout.write(jsonutil.dumps(summarize(rows, days)).decode() + "\n")
    else:
        sys.stdout.write(f"usage {days[0]} .. {days[-1]} (UTC)\n{render_table(rows, by)}\n")
    return 0


async def _read(config: DatabaseConfig, days: Sequence[str]) -> list[UsageRow]:
    engine = create_engine(config)
    try:
        return usage_rows(await Ledger(engine).usage(days))
    finally:
        await engine.dispose()
