"""A private PostgreSQL cluster for the tests: `initdb` + `pg_ctl` on a free loopback port.

Like `RedisServer` (tests/gatewayproc.py): a real server the tests may stop and restart
(on the same data directory and port) while a gateway is sending it traffic. Never the
machine's own PostgreSQL service: nothing here reads or changes it.

Root: initdb and postgres refuse to run as root, and CI runs the suite as root. Then
every PostgreSQL program runs as the `postgres` system user (`runuser -u postgres --`),
and the cluster lives in a fresh directory under the system temp dir, mode 0o755 and
owned by that user: pytest's own tmp dirs may be 0o700 (not traversable by `postgres`).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from tests.fakes.server import free_port

PG_USER = "postgres"  # the cluster's superuser, and the system user when running as root
START_TIMEOUT_S = 30
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_bin_dir() -> Path:
    """The newest Debian install (/usr/lib/postgresql/<version>/bin), else the PATH's."""
    root = Path("/usr/lib/postgresql")
    versions = []
    if root.is_dir():
        for child in root.iterdir():
            if (child / "bin" / "initdb").exists() and child.name.replace(".", "").isdigit():
                versions.append((tuple(int(p) for p in child.name.split(".")), child / "bin"))
    if versions:
        return max(versions)[1]
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        # pg_ctl finds `postgres` beside its real (symlink-resolved) location.
        return Path(found).resolve().parent
    raise RuntimeError(
        "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb and no initdb "
        "on PATH (scripts/test installs Debian's `postgresql` package)"
    )


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, fsync off."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, and initdb refuses root: it needs a {PG_USER!r} "
                    "system user to run as (Debian's postgresql package makes one)"
                ) from None
        # Under /tmp, not pytest's tmp dir: it must be traversable by `postgres`.
        self.workdir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.workdir.chmod(0o755)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._initialized = False
        self._cleaned = False
        # Stopped at exit too: a session that pytest aborts never runs fixture teardown,
        # and the postmaster (in its own session, started by pg_ctl) would outlive it.
        atexit.register(self.close)

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the default `postgres` database."""
        return self.url_for("postgres")

    def start(self) -> PostgresServer:
        """Start it (the first time: create the cluster); again after `stop()`, on the
        same data directory and port."""
        if not self._initialized:
            self._initdb()
            self._initialized = True
        elif self.running():
            return self
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
        )
        self._wait_accepting()
        return self

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Shut down: "fast" disconnects clients and aborts their transactions (a clean
        shutdown); "immediate" is a crash (recovery runs at the next start)."""
        if self._initialized and self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def running(self) -> bool:
        status = subprocess.run(
            self._command("pg_ctl", "status", "-D", str(self.data_dir)),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        return status.returncode == 0

    def close(self) -> None:
        """Stop it and delete the cluster's files."""
        if self._cleaned:
            return
        try:
            self.stop()
        finally:
            self._cleaned = True
            shutil.rmtree(self.workdir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); returns its URL."""
        if not _DATABASE_NAME.match(name):
            raise ValueError(f"not a plain lower-case database name: {name!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql over TCP (as the tests' clients connect); returns its output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {result.stderr.strip()}")
        return result.stdout

    def _initdb(self) -> None:
        if self.as_root:
            # The whole directory belongs to `postgres`: the data dir, the socket, the log.
            shutil.chown(self.workdir, PG_USER, PG_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.workdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "logging_collector": "off",
        }
        # In postgresql.conf (appending keeps its owner), so a restart reuses the port.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pgserver.py\n")
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")

    def _command(self, program: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / program), *args]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        return cmd

    def _run(self, program: str, *args: str) -> None:
        # cwd: the programs run as `postgres`, which may not be allowed into the caller's.
        result = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env={**os.environ, "LC_ALL": "C"},
            timeout=START_TIMEOUT_S + 30,
        )
        if result.returncode != 0:
            log = (
                self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            )
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{log}"
            )

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres did not listen on {self.port}:\n{self.log_path.read_text()}")
