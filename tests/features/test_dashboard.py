"""The shipped Grafana dashboard, proven against real data: a real Prometheus scrapes a
real gateway under a little traffic, and every PromQL expression of the dashboard must
return data through Prometheus's HTTP API."""

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
from tests.features.test_metrics import TOKEN, metrics_config, send_traffic
from tests.gatewayproc import REPO, GatewayProcess

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "gateway.json"
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
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(metrics_config(fake_openai))


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


@pytest.mark.timeout(60)
def test_every_dashboard_query_returns_data(
    prometheus: Prometheus, gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    assert wait_for(lambda: scraped_up(prometheus), 15), prometheus.log()
    # Two rounds with a scrape in between: a series born in the first round has a point
    # before the second, so every rate is over real increments (as under steady traffic).
    for sent in (6, 12):
        send_traffic(gateway.url, fake_openai)  # six client requests
        assert wait_for(lambda n=sent: scraped_requests(prometheus) == n, 10), prometheus.log()

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
