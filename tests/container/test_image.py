"""The real image on a real Docker Engine (scripts/test-container builds it, starts the
engine and runs this module; the main suite does not collect it). Containers use the
host's network: the engine runs with `--bridge=none`."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.fakes.server import free_port
from tests.gatewayproc import REPO

IMAGE = os.environ.get("GATEWAY_CONTAINER_IMAGE", "model-gateway:ci")
COMPOSE_BINARY = os.environ["COMPOSE_BINARY"]
DOCKER_CONFIG = REPO / "config" / "gateway.docker.yaml"
KEY = "gw-container-test-key-0123"
METRICS_TOKEN = "container-test-metrics-token"
UID = 10001


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return False


class Container:
    """One `docker run -d --network host` of the image, removed at the end."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        command: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.name = f"gw-test-{uuid.uuid4().hex[:8]}"
        environment = {"GATEWAY_PORT": str(self.port), **(env or {})}
        env_args = [part for k, v in environment.items() for part in ("--env", f"{k}={v}")]
        docker("run", "-d", "--network", "host", "--name", self.name, *env_args, *args, IMAGE,
               *command)  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        out = docker("inspect", "--format", "{{json .State}}", self.name).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    def health(self) -> str:
        return str(self.state().get("Health", {}).get("Status", "none"))

    def wait_healthy(self, timeout_s: float = 60) -> None:
        # The engine runs the first check one interval (10 s) after the start.
        ok = wait_for(lambda: self.health() == "healthy" or not self.state()["Running"], timeout_s)
        assert ok and self.health() == "healthy", (self.health(), self.logs())

    def wait_exit(self, timeout_s: float = 60) -> int:
        assert wait_for(lambda: not self.state()["Running"], timeout_s), self.logs()
        return int(self.state()["ExitCode"])

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, **kwargs)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(**kwargs: Any) -> Container:
        container = Container(**kwargs)
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove()


SECRETS = {"GATEWAY_KEY": KEY, "METRICS_TOKEN": METRICS_TOKEN}


def owned_dir(tmp_path: Path, name: str) -> Path:
    """A host directory the image's user can write (a bind mount keeps host owners)."""
    path = tmp_path / name
    path.mkdir()
    os.chown(path, UID, UID)
    return path


def test_image_runs_as_a_numeric_non_root_user() -> None:
    user = docker("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()
    assert user == f"{UID}:{UID}"
    ids = docker("run", "--rm", "--network", "host", IMAGE, "id", "-u").stdout.strip()
    assert ids == str(UID)


def test_healthy_serves_chat_and_stream_and_metrics_need_the_token(
    containers: Callable[..., Container],
) -> None:
    gw = containers(env=SECRETS)
    gw.wait_healthy()
    with gw.client() as client:
        reply = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content
        chunks = list(
            client.chat.completions.create(
                model="sim-large", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "stop"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{gw.url}/metrics").status_code == 401
    metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200 and "gateway_requests_total" in metrics.text
    # Without REDIS_URL the image runs on its embedded stores, and says nothing of Redis.
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert not re.search("redis", gw.logs(), re.IGNORECASE), gw.logs()


@pytest.mark.parametrize("missing", ["GATEWAY_KEY", "METRICS_TOKEN"])
def test_a_missing_secret_stops_the_start_naming_it(
    containers: Callable[..., Container], missing: str
) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    gw = containers(env=env)
    assert gw.wait_exit() != 0
    logs = gw.logs()
    assert missing in logs, logs
    assert "gateway ready" not in logs


def test_an_empty_redis_url_runs_without_redis_and_logs_nothing_of_it(
    containers: Callable[..., Container],
) -> None:
    gw = containers(env={**SECRETS, "REDIS_URL": ""})
    gw.wait_healthy()
    with gw.client() as client:
        reply = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hello"}]
        )
    assert reply.choices[0].message.content
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    time.sleep(3)  # the old flood logged a line every ~1.3 s
    assert not re.search("redis", gw.logs(), re.IGNORECASE), gw.logs()


def test_read_only_root_with_a_tmpfs_tmp_serves_with_two_workers(
    containers: Callable[..., Container],
) -> None:
    gw = containers(
        env=SECRETS,
        args=(
            "--read-only",
            "--tmpfs", "/tmp",
            "--tmpfs", f"/app/data:uid={UID},gid={UID}",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
        ),
        command=("gateway", "serve", "--workers", "2"),
    )  # fmt: skip
    gw.wait_healthy()
    with gw.client() as client:
        for _ in range(6):  # both workers answer (the kernel spreads the accepts)
            reply = client.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "hello"}]
            )
            assert reply.choices[0].message.content
    metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200


def compose_service(name: str) -> dict[str, Any]:
    """A service of docker-compose.yml as Compose v2 reads it (`config --format json`)."""
    result = subprocess.run(
        [COMPOSE_BINARY, "-f", str(REPO / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **SECRETS,
            "POSTGRES_PASSWORD": "p",
            "GRAFANA_DB_PASSWORD": "g",
            "GRAFANA_ADMIN_PASSWORD": "a",
        },  # fmt: skip
        check=True,
        timeout=60,
    )
    service: dict[str, Any] = json.loads(result.stdout)["services"][name]
    return service


def duration_s(text: str) -> float:
    """A compose duration (`1m30s`, `90s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_docker_stop_with_the_compose_grace_period_lets_streams_finish_and_bills_them(
    containers: Callable[..., Container], tmp_path: Path
) -> None:
    """Three 15 s streams are in flight at `docker stop`: with the compose file's
    stop_grace_period (longer than the config's drain timeout) they finish, and the
    request log and ledger (SQLite in the mounted data directory) bill all three."""
    grace_s = duration_s(compose_service("gateway")["stop_grace_period"])
    config = yaml.safe_load(DOCKER_CONFIG.read_text())
    drain_s = float(config["server"]["drain_timeout_s"])
    assert grace_s > drain_s > 15, (grace_s, drain_s)
    config["providers"]["slow"] = {
        "kind": "simulated",
        "simulation": {"ttft_s": 0.1, "chunk_delay_s": 0.5, "output_tokens": 30},
    }
    config["models"].append(
        {"name": "sim-slow", "provider": "slow", "model": "sim-slow",
         "input_price_per_mtok_usd": 1.0, "output_price_per_mtok_usd": 2.0}
    )  # fmt: skip
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "gateway.yaml").write_text(yaml.safe_dump(config))
    data = owned_dir(tmp_path, "data")
    gw = containers(
        env={**SECRETS, "GATEWAY_CONFIG": "/cfg/gateway.yaml"},
        args=("-v", f"{config_dir}:/cfg:ro", "-v", f"{data}:/app/data"),
    )
    gw.wait_healthy()
    results: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []

    def stream(n: int) -> None:
        try:
            with gw.client(timeout=60) as client:
                text, finish = "", None
                for chunk in client.chat.completions.create(
                    model="sim-slow", messages=[{"role": "user", "content": f"go {n}"}], stream=True
                ):
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                results.append((text, finish))
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    # Three different prompts: the cache would serve identical ones from one call.
    threads = [threading.Thread(target=stream, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    started = time.monotonic()
    docker("stop", "--time", str(int(grace_s)), gw.name, timeout=grace_s + 30)
    stopped_after = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len(results) == 3 and all(f == "stop" and len(t.split()) == 30 for t, f in results)
    assert 10 < stopped_after < drain_s, stopped_after  # drained, not killed at the grace
    assert gw.state()["ExitCode"] == 0, gw.logs()
    with sqlite3.connect(data / "gateway.db") as db:
        rows = db.execute(
            "SELECT status, output_tokens, cost_usd FROM gateway_requests "
            "WHERE model = 'sim-slow' AND stream"
        ).fetchall()
        ledger = db.execute(
            "SELECT SUM(requests), SUM(output_tokens) FROM gateway_spend_daily "
            "WHERE deployment LIKE '%sim-slow%'"
        ).fetchone()
    assert [(s, o) for s, o, _ in rows] == [(200, 30)] * 3, rows
    assert all(cost > 0 for _, _, cost in rows)
    assert tuple(ledger) == (3, 90), ledger
