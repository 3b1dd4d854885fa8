"""Start the real gateway (`python -m gateway serve`) on a free port with a given config."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.telemetry.logs import AccessLog
from tests.fakes.server import free_port

REPO = Path(__file__).resolve().parent.parent


class GatewayProcess:
    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "port": self.port}}
        if "url" not in config.get("database", {}):
            # Gateways that share a Redis are replicas: they share a database too (an
            # SQLite file here); any other gateway gets its own.
            redis_url = config.get("redis", {}).get("url")
            name = f"redis-{redis_url.rsplit(':', 1)[-1]}" if redis_url else str(self.port)
            database = {"url": f"sqlite+aiosqlite:///{workdir}/gateway-{name.replace('/', '-')}.db"}
            config["database"] = {**config.get("database", {}), **database}
        self.config_path = workdir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.workers = workers
        self.env = env or {}
        # What runs the CLI: `python -m gateway` unless a test needs a prelude first.
        self.launcher = launcher or ["-m", "gateway"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> GatewayProcess:
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        cmd = [
            sys.executable,
            *self.launcher,
            "serve",
            "--config",
            str(self.config_path),
            "--workers",
            str(self.workers),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=REPO)
        # Stopped at exit too: a session that pytest aborts (an INTERNALERROR) never runs
        # the fixtures' teardown, and its gateways would outlive it.
        atexit.register(self.stop)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        time.sleep(AccessLog.FLUSH_AFTER_S * 3)  # access lines are flushed in batches
        return self.log_path.read_text(errors="replace")


class RedisServer:
    """A private redis-server on a free port: the tests may stop and restart it."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
