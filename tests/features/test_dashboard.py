"""The shipped Grafana dashboard and alert rules, proven against real data: a real
Prometheus scrapes a real gateway (with Redis, a key with a budget, a priced model) under
a little traffic; every PromQL expression of the dashboard must return data through
Prometheus's HTTP API, and every alert rule must evaluate there without error."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import free_port
from tests.features.test_metrics import (
    BUDGET_KEY,
    PRICED,
    TOKEN,
    budget_metrics_config,
    send_traffic,
)
from tests.gatewayproc import REPO, GatewayProcess, RedisServer

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "gateway.json"
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
# What Grafana would substitute; template variables select everything.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${route}": ".*",
    "$route": ".*",
    "${provider}": ".*",
    "$provider": ".*",
}


def dashboard_exprs(dashboard: dict[str, Any], field: str = "expr") -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' nested panels included;
    `field`: the target's query field (`expr` for Prometheus, `rawSql` for SQL)."""
    found = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((panel["title"], target[field]))
    return found


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"unknown Grafana variable {leftover} in {expr}"
    return expr


class Prometheus:
    def __init__(self, workdir: Path, target: str, token: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "authorization": {"type": "Bearer", "credentials": token},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, binary: str) -> Prometheus:
        cmd = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        assert wait_for(lambda: self._get("/-/ready") == 200, 15), self.log()
        return self

    def _get(self, path: str) -> int:
        try:
            return httpx.get(f"{self.url}{path}", timeout=1).status_code
        except httpx.HTTPError:
            return 0

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", timeout=5).json()
        assert body["status"] == "success", (path, body)
        return body["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "prometheus is not installed (Debian package `prometheus`; scripts/test installs it)"
        )
    return binary


@pytest.fixture
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    redis_server: RedisServer,
) -> GatewayProcess:
    config = budget_metrics_config(fake_openai)
    config["redis"] = {"url": redis_server.url, "socket_timeout_s": 2, "operation_deadline_s": 3}
    return start_gateway(config)


@pytest.fixture
def prometheus(
    prometheus_binary: str, gateway: GatewayProcess, tmp_path: Path
) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path, f"127.0.0.1:{gateway.port}", TOKEN).start(prometheus_binary)
    yield prom
    prom.stop()


def scraped_up(prom: Prometheus) -> bool:
    result = prom.query('up{job="gateway"}')
    return bool(result) and result[0]["value"][1] == "1"


def scraped_requests(prom: Prometheus) -> float:
    result = prom.query('sum(gateway_requests_total{job="gateway"})')
    return float(result[0]["value"][1]) if result else -1.0


def scraped_value(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else -1.0


def priced_chat(gateway: GatewayProcess) -> int:
    """A request of the key with a budget (1 USD): the first costs it all, the next are
    refused for the budget (a rejection with its key)."""
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={
            "model": PRICED,
            "messages": [{"role": "user", "content": "Bill me."}],
            "max_tokens": 10,
        },
        headers={"authorization": f"Bearer {BUDGET_KEY}"},
        timeout=10,
    )
    return response.status_code


def send_dashboard_traffic(prom: Prometheus, gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    # Two rounds with a scrape in between: a series born in the first round has a point
    # before the second, so every rate is over real increments (as under steady traffic).
    sent = 0
    for statuses in ([200, 429], [429]):
        send_traffic(gateway.url, fake)  # six client requests: stream, error, 404...
        assert [priced_chat(gateway) for _ in statuses] == statuses
        sent += 6 + len(statuses)
        assert wait_for(lambda n=sent: scraped_requests(prom) == n, 10), prom.log()
    # The budget's spend comes from the ledger: written, then read back (about 3 s).
    spent = 'gateway_key_budget_spent_usd{key="budgeted"}'
    assert wait_for(lambda: scraped_value(prom, spent) == 1.0, 15), prom.log()


@pytest.mark.timeout(90)
def test_every_dashboard_query_returns_data(
    prometheus: Prometheus, gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    assert wait_for(lambda: scraped_up(prometheus), 15), prometheus.log()
    send_dashboard_traffic(prometheus, gateway, fake_openai)

    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 20
    empty, all_nan = [], []
    for title, expr in exprs:
        result = prometheus.query(substitute(expr))
        values = [float(series["value"][1]) for series in result]
        if not values:
            empty.append(f"{title}: {expr}")
        elif all(math.isnan(v) for v in values):
            all_nan.append(f"{title}: {expr}")
    assert empty == [], "queries without data:\n" + "\n".join(empty)
    assert all_nan == [], "queries with only NaN:\n" + "\n".join(all_nan)
    check_alert_rules(prometheus)


def check_alert_rules(prom: Prometheus) -> None:
    """Every rule of alerts.yml loaded and evaluated without error on this real data; the
    key at 100% of its budget has the budget alert on its way (pending for a minute)."""
    shipped = yaml.safe_load(ALERTS.read_text())["groups"]
    names = {rule["alert"] for group in shipped for rule in group["rules"]}
    for group in shipped:
        for rule in group["rules"]:
            prom.query(rule["expr"])  # parses and evaluates (asserts success)

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        done = [r for r in rules if not r["lastEvaluation"].startswith("0001-")]
        return done if len(done) == len(rules) else []

    assert wait_for(lambda: bool(evaluated()), 10), prom.log()
    rules = evaluated()
    assert {r["name"] for r in rules} == names
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules] == [
        (r["name"], "ok", "") for r in rules
    ]
    budget_alert = next(r for r in rules if r["name"] == "GatewayKeyBudgetAbove90Percent")
    assert [a["labels"]["key"] for a in budget_alert["alerts"]] == ["budgeted"]
    assert budget_alert["alerts"][0]["state"] in ("pending", "firing")
    down = next(r for r in rules if r["name"] == "GatewayDown")
    assert down["alerts"] == []
