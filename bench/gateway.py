"""The gateway under test: its generated config variants and its real server process."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.nginx import Upstream
from bench.procs import (
    Memory,
    ProcessGroup,
    free_port,
    memory_of,
    wait_for_http,
    wait_for_port,
    worker_pids,
)

REPO = Path(__file__).resolve().parent.parent
BENCH_KEY = "gw-bench-key-0123456789abcdef"
PROVIDER_KEY = "sk-bench-not-a-real-key"
MODEL = "bench-model"  # minimal variant: one deployment
STREAM_MODEL = "bench-stream"  # the same, over the SSE location
ROUTE = "bench-auto"  # realistic variant: `cheapest` over three deployments
# (public name, input and output USD per 1M tokens): three prices so `cheapest` ranks.
REALISTIC_DEPLOYMENTS = (("bench-a", 0.15, 0.60), ("bench-b", 1.0, 2.0), ("bench-c", 2.5, 10.0))


def _provider(base_url: str) -> dict[str, Any]:
    return {
        "kind": "openai",
        "base_url": base_url,
        "api_key": PROVIDER_KEY,
        "timeouts": {"connect_s": 5, "read_s": 30, "total_s": 60},
    }


_PRICES = {"input_price_per_mtok_usd": 0.15, "output_price_per_mtok_usd": 0.6}


def minimal_config(upstream: Upstream) -> dict[str, Any]:
    """Open auth, one deployment (and its streaming twin), everything else default
    (so metrics and the JSON access log are on, as they are out of the box)."""
    return {
        "auth": {"mode": "open"},
        "providers": {
            "nginx": _provider(upstream.base_url),
            "nginx-sse": _provider(upstream.stream_base_url),
        },
        "models": [  # priced like gpt-4o-mini: an unpriced deployment is a config error
            {"name": MODEL, "provider": "nginx", "model": MODEL, **_PRICES},
            {"name": STREAM_MODEL, "provider": "nginx-sse", "model": STREAM_MODEL, **_PRICES},
        ],
    }


# What `realistic` switches on; the `feature-*` scenarios switch them on one at a time.
FEATURES = frozenset({"key", "routing", "cache", "metrics", "records"})


def realistic_config(
    upstream: Upstream, redis_url: str | None, features: frozenset[str] = FEATURES
) -> dict[str, Any]:
    """A gateway key, `cheapest` over three deployments, metrics (and the access log),
    Redis with the cache on (missed), the request log and spend ledger in SQL (the
    embedded SQLite): each of those only when in `features`. Without
    `routing` the route has one deployment; without `key`, auth is open. `limits` (not
    in FEATURES: the `realistic-limits` scenario) gives the key rpm and tpm limits too
    high to refuse anything, checked and settled in Redis like any other."""
    models = [
        {
            "name": name,
            "provider": "nginx",
            "model": name,
            "input_price_per_mtok_usd": price_in,
            "output_price_per_mtok_usd": price_out,
            "context_window_tokens": 128000,
        }
        for name, price_in, price_out in REALISTIC_DEPLOYMENTS
    ]
    routed = [m["name"] for m in models] if "routing" in features else [models[0]["name"]]
    metrics = "metrics" in features
    config: dict[str, Any] = {
        "server": {"access_log": metrics, "log_level": "info"},
        "auth": {"mode": "open"},
        "providers": {"nginx": _provider(upstream.base_url)},
        "models": models,
        "routes": [{"name": ROUTE, "policy": "cheapest", "models": routed}],
        "metrics": {"enabled": metrics},
        "cache": {"enabled": "cache" in features},
        "database": {"records": "records" in features},
    }
    if "key" in features:
        key: dict[str, Any] = {"name": "bench", "key": BENCH_KEY, "team": "bench"}
        key["routes"] = [ROUTE]
        if "limits" in features:
            key.update(rpm=100_000_000, tpm=10**12)
        config["auth"] = {"mode": "keys", "keys": [key]}
    if redis_url is not None and ("cache" in features or "limits" in features):
        config["redis"] = {"url": redis_url}
    return config


def with_database(config: dict[str, Any], src: Path, sqlite_path: Path) -> dict[str, Any]:
    """`config` with its database in the benchmark's own directory (never the source
    tree's `data/`): the embedded SQLite at `sqlite_path`, or BENCH_DATABASE_URL (a
    PostgreSQL) to measure that. A revision older than the system of record gets none."""
    if not (src / "gateway" / "records").is_dir():
        return {k: v for k, v in config.items() if k != "database"}
    url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite+aiosqlite:///{sqlite_path}"
    return {**config, "database": {**config.get("database", {}), "url": url}}


def with_transport(config: dict[str, Any], transport: str) -> dict[str, Any]:
    """`config` with `server.upstream_transport` set (`bench.run --transport`)."""
    return {**config, "server": {**config.get("server", {}), "upstream_transport": transport}}


@dataclass
class GatewayServer:
    """A running `python -m gateway serve` and what the harness knows of it."""

    pid: int
    port: int
    log_path: Path
    rest_memory: list[Memory] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def memory(self) -> list[Memory]:
        """One entry per serving process (the workers when there are several)."""
        found = [memory_of(pid) for pid in worker_pids(self.pid)]
        return [m for m in found if m is not None]


def start_gateway(
    group: ProcessGroup,
    workdir: Path,
    name: str,
    config: dict[str, Any],
    workers: int,
    src: Path = REPO,
    python_args: tuple[str, ...] = (),
) -> GatewayServer:
    """Runs `python -m gateway serve` from the source tree `src` (default: this repo).

    `python_args` go before `-m gateway` (a profiler's); such a gateway is stopped with
    SIGINT, on which both uvicorn and the profiler finish cleanly.
    """
    config = with_database(config, src, workdir / f"gateway-{name}.db")
    config_path = workdir / f"gateway-{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / f"gateway-{name}.log"
    cmd = [sys.executable, *python_args, "-m", "gateway", "serve", "--config", str(config_path)]
    cmd += ["--port", str(port), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    stop_signal = signal.SIGINT if python_args else signal.SIGTERM
    proc = group.start(f"gateway-{name}", cmd, log_path, env=env, cwd=src, stop_signal=stop_signal)
    try:
        wait_for_port(port, proc, 30, "the gateway")
        wait_for_http(("127.0.0.1", port), "/readyz", 30)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')[-4000:]}") from None
    server = GatewayServer(proc.pid, port, log_path)
    if workers > 1:
        _wait_for_workers(server, workers)
    return server


def _wait_for_workers(server: GatewayServer, workers: int) -> None:
    deadline = time.monotonic() + 30
    while len(worker_pids(server.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(group: ProcessGroup, workdir: Path) -> str:
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("redis-server not found")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", str(workdir)]
    proc = group.start("redis", cmd, workdir / "redis.log")
    wait_for_port(port, proc, 10, "redis-server")
    return f"redis://127.0.0.1:{port}/0"
