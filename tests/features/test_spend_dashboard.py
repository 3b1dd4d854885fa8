"""The shipped "Spend" Grafana dashboard, proven against real data: a real gateway writes
its spend ledger and request log into a real PostgreSQL under a little traffic (config
keys of two teams, a runtime key with a budget, a failing route), and every SQL query of
docker/grafana/dashboards/spend.json, its Grafana macros expanded as Grafana expands
them, must return rows when run as Grafana's read-only role (created by the SQL that
docker-compose.yml runs in the postgres container). The month-to-date cost per key, team
and route must equal what the gateway reported in its `x-gateway-cost-usd` headers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import free_port
from tests.features.test_dashboard import dashboard_exprs
from tests.gatewayproc import REPO, GatewayProcess
from tests.pgserver import PostgresServer

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "spend.json"
COMPOSE = REPO / "docker-compose.yml"
DATABASE = "spend_dashboard"
READER = "grafana_reader"  # the role of the Grafana data source (datasources/postgres.yml)
ADMIN_KEY = "gw-spend-admin-CANARY-4f0a"
KEY_RED = "gw-spend-red-CANARY-81c2"
KEY_BLUE = "gw-spend-blue-CANARY-0d7e"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How much was that?"}]
_COMPOSE_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")
_MACRO = re.compile(r"\$__(\w+)\(")
_RELATIVE = re.compile(r"^now(?:-(\d+)([smhdw]))?$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# -- Grafana's side: the time range and the macros of its PostgreSQL data source ---------


def resolve_time(expr: str, now: datetime) -> datetime:
    """`now` or `now-<n><unit>`: the relative times a dashboard's `time` uses."""
    match = _RELATIVE.match(expr)
    assert match is not None, f"unsupported dashboard time {expr!r}"
    if match.group(1) is None:
        return now
    return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".") + "Z"


def expand_macro(name: str, arg: str, start: datetime, end: datetime) -> str:
    """What Grafana's PostgreSQL data source puts in place of `$__name(arg)`
    (pkg/tsdb/grafana-postgresql-datasource/macros.go)."""
    start_s, end_s = int(start.timestamp()), int(end.timestamp())
    expansions = {
        "timeFilter": f"{arg} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'",
        "timeFrom": f"'{rfc3339(start)}'",
        "timeTo": f"'{rfc3339(end)}'",
        "unixEpochFilter": f"{arg} >= {start_s} AND {arg} <= {end_s}",
        "unixEpochFrom": str(start_s),
        "unixEpochTo": str(end_s),
    }
    assert name in expansions, f"the test does not expand $__{name}(): add it"
    assert bool(arg) == name.endswith("Filter"), f"$__{name}({arg})"
    return expansions[name]


def expand_macros(sql: str, start: datetime, end: datetime) -> str:
    out, pos = [], 0
    while (match := _MACRO.search(sql, pos)) is not None:
        out.append(sql[pos : match.start()])
        depth, i = 1, match.end()
        while depth:
            assert i < len(sql), f"unbalanced parentheses after $__{match.group(1)}("
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        out.append(expand_macro(match.group(1), sql[match.end() : i - 1].strip(), start, end))
        pos = i
    out.append(sql[pos:])
    expanded = "".join(out)
    leftover = re.findall(r"\$\{?\w+", expanded)
    assert not leftover, f"unknown Grafana variable {leftover} in {sql}"
    return expanded


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, rawSql) for every target of every panel."""
    return dashboard_exprs(dashboard, "rawSql")


def compose_defaults(value: str) -> str:
    """A compose value as `docker compose up` substitutes it with nothing set: defaults."""
    return _COMPOSE_VAR.sub(lambda m: m.group(2), value)


# -- the gateway's side ---------------------------------------------------------------------


def spend_config(fake: FakeOpenAI, database_url: str) -> dict[str, Any]:
    def model(name: str, provider: str, in_usd: float, out_usd: float) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "model": f"upstream-{name}",
            "input_price_per_mtok_usd": in_usd,
            "output_price_per_mtok_usd": out_usd,
        }

    def provider(base_url: str) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": base_url,
            "api_key": OPENAI_KEY,
            "timeouts": {"connect_s": 1.0, "read_s": 2.0},
        }

    return {
        "auth": {
            "mode": "keys",
            "keys": [
                {"name": "svc-red", "key": KEY_RED, "team": "red"},
                {"name": "svc-blue", "key": KEY_BLUE, "team": "blue"},
            ],
            "admin_keys": [ADMIN_KEY],
        },
        "server": {"request_timeout_s": 10, "access_log": False},
        "routing": {"cooldown_failures": 1000},
        "database": {"url": database_url, "flush_interval_s": 0.1},
        "providers": {
            "up": provider(f"{fake.base_url}/v1"),
            "dead": provider(f"http://127.0.0.1:{free_port()}/v1"),
        },
        "models": [
            model("m-a", "up", 1.25, 10.0),
            model("m-b", "up", 3.0, 15.0),
            model("m-dead", "dead", 1.0, 1.0),
        ],
        "routes": [
            {"name": "chat", "policy": "fallback", "models": ["m-a"]},
            {"name": "broken", "policy": "fallback", "models": ["m-dead"]},
        ],
    }


@dataclass
class Sent:
    """What the gateway's headers said: USD per key name, team and route."""

    by_key: dict[str, float]
    by_team: dict[str, float]
    by_route: dict[str, float]
    paid: int  # requests answered with a cost
    total: int  # every request sent, failures included

    @property
    def cost(self) -> float:
        return sum(self.by_key.values())


def send_traffic(gateway: GatewayProcess, runtime_key: str) -> Sent:
    sent = Sent(defaultdict(float), defaultdict(float), defaultdict(float), 0, 0)
    plan = [  # (key, key name, team, model or route, requests)
        (KEY_RED, "svc-red", "red", "chat", 3),
        (KEY_BLUE, "svc-blue", "blue", "chat", 1),
        (KEY_BLUE, "svc-blue", "blue", "m-b", 2),
        (runtime_key, "svc-runtime", "green", "chat", 2),
        (runtime_key, "svc-runtime", "green", "m-b", 1),
    ]
    for key, name, team, model, count in plan:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        for _ in range(count):
            raw = client.chat.completions.with_raw_response.create(model=model, messages=ASK)
            assert raw.parse().choices[0].message.content
            cost = float(raw.headers["x-gateway-cost-usd"])
            assert cost > 0
            sent.by_key[name] += cost
            sent.by_team[team] += cost
            sent.by_route[model] += cost
            sent.paid += 1
            sent.total += 1
    # A failed request: in the request log (and the error rate), not in the ledger.
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY_RED, max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="broken", messages=ASK)
    assert failed.value.status_code >= 500
    sent.total += 1
    return sent


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def psql_int(server: PostgresServer, sql: str) -> int:
    return int(server.psql(sql, database=DATABASE).strip() or 0)


# -- running the dashboard's SQL as Grafana's role ------------------------------------------


Rows = list[dict[str, Any]]


async def run_as_reader(url: str, queries: list[tuple[str, str]]) -> tuple[list[Rows], str]:
    """Every query's rows, and the error a write attempt by the same role gets."""
    engine = create_async_engine(url)
    try:
        results = []
        async with engine.connect() as conn:
            for _, sql in queries:
                result = await conn.execute(text(sql))
                results.append([dict(row) for row in result.mappings().all()])
        async with engine.connect() as conn:
            try:
                await conn.execute(text("DELETE FROM gateway_keys"))
            except DBAPIError as exc:
                refused = str(exc.orig)
            else:
                refused = ""
            await conn.rollback()
        return results, refused
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def reader_url(postgres_server: PostgresServer) -> str:
    """A fresh database with Grafana's read-only role set up by the compose stack's own SQL
    (before the gateway creates its tables, as in the container); that role's URL."""
    url = postgres_server.create_database(DATABASE)
    # The role is cluster-wide; only a dropped database of an earlier run referred to it.
    postgres_server.psql(f"DROP ROLE IF EXISTS {READER}")
    compose = yaml.safe_load(COMPOSE.read_text())
    init_sql = compose_defaults(compose["configs"]["postgres_grafana_reader"]["content"])
    postgres_server.psql(init_sql, database=DATABASE)
    password = re.search(r"PASSWORD '([^']*)'", init_sql)
    assert password is not None
    return make_url(url).set(username=READER, password=password.group(1)).render_as_string(False)


@pytest.mark.timeout(90)
def test_every_spend_dashboard_query_returns_the_gateways_spend(
    postgres_server: PostgresServer,
    reader_url: str,
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
) -> None:
    gateway = start_gateway(spend_config(fake_openai, postgres_server.url_for(DATABASE)))
    month, day = f"{datetime.now(UTC):%Y-%m}", f"{datetime.now(UTC):%Y-%m-%d}"
    created = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"name": "svc-runtime", "team": "green", "budget_usd": 2, "budget_period": "month"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    sent = send_traffic(gateway, created.json()["key"])
    assert fake_openai.violations == []

    # Written within the flush interval: every request in the log, every paid one summed.
    def written() -> bool:
        ledger = psql_int(postgres_server, "SELECT sum(requests) FROM gateway_spend_daily")
        logged = psql_int(postgres_server, "SELECT count(*) FROM gateway_requests")
        return ledger == sent.paid and logged == sent.total

    assert wait_for(written, 10), (
        postgres_server.psql("SELECT * FROM gateway_spend_daily", database=DATABASE),
        postgres_server.psql("SELECT route, status FROM gateway_requests", database=DATABASE),
    )

    # Grafana's $__unixEpochFilter truncates the range to whole seconds: query from the
    # next second on, as a dashboard refreshed a moment later would.
    time.sleep(1 - time.time() % 1)
    dashboard = json.loads(DASHBOARD.read_text())
    now = datetime.now(UTC)
    start, end = (resolve_time(dashboard["time"][edge], now) for edge in ("from", "to"))
    queries = [
        (title, expand_macros(sql, start, end)) for title, sql in dashboard_queries(dashboard)
    ]
    assert len(queries) >= 8
    results, refused = asyncio.run(run_as_reader(reader_url, queries))
    if f"{datetime.now(UTC):%Y-%m}" != month:
        pytest.skip("the UTC month changed during the test: month-to-date starts again")

    answered = list(zip(queries, results, strict=True))
    empty = [f"{title}:\n{sql}" for (title, sql), rows in answered if not rows]
    assert empty == [], "queries without rows:\n" + "\n\n".join(empty)
    panel = {title: rows for (title, _), rows in answered}
    assert len(panel) == len(queries)  # one query per panel, titles unique

    def costs(title: str, column: str) -> dict[str, float]:
        return {row[column]: float(row["cost_usd"]) for row in panel[title]}

    by_key = costs("Month-to-date cost by key", "key")
    assert by_key == pytest.approx(sent.by_key, abs=1e-9, rel=0)
    assert costs("Month-to-date cost by team", "team") == pytest.approx(
        sent.by_team, abs=1e-9, rel=0
    )
    assert costs("Month-to-date cost by route", "route") == pytest.approx(
        sent.by_route, abs=1e-9, rel=0
    )
    (month_to_date,) = panel["Cost, month to date"]
    assert float(month_to_date["cost_usd"]) == pytest.approx(sent.cost, abs=1e-9, rel=0)
    if f"{datetime.now(UTC):%Y-%m-%d}" == day:
        (today,) = panel["Cost today (UTC)"]
        assert float(today["cost_usd"]) == pytest.approx(sent.cost, abs=1e-9, rel=0)
        (daily,) = panel["Requests and error rate per day"]
        assert daily["requests"] == sent.total and daily["errors_5xx"] == 1
        assert float(daily["error_rate"]) == pytest.approx(1 / sent.total)
    daily_by_team = {row["team"]: float(row["cost_usd"]) for row in panel["Daily cost by team"]}
    assert daily_by_team == pytest.approx(sent.by_team, abs=1e-9, rel=0)

    (budget,) = panel["Budget used per runtime key"]  # config keys have no row
    assert (budget["key"], budget["team"], budget["period"]) == ("svc-runtime", "green", "month")
    assert float(budget["budget_usd"]) == 2
    assert float(budget["spent_usd"]) == pytest.approx(sent.by_key["svc-runtime"], abs=1e-9)
    assert float(budget["used"]) == pytest.approx(sent.by_key["svc-runtime"] / 2, abs=1e-9)

    latency = {row["route"]: row for row in panel["Latency per route"]}
    assert set(latency) == {"chat", "m-b", "broken"}
    assert latency["chat"]["requests"] == 6
    assert all(0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] for row in latency.values())

    # Grafana's role reads; it cannot change anything.
    assert "permission denied" in refused or "read-only transaction" in refused, refused
