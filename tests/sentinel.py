"""A real Redis Sentinel deployment on loopback: a primary, a replica and three sentinels.

Every process is `redis-server` (a sentinel is `redis-server sentinel.conf --sentinel`,
the binary Debian's `redis-sentinel` links to), on free 127.0.0.1 ports, in its own
work directory, with no persistence. The sentinels agree with a quorum of 2 and judge a
silent primary down after `down_after_ms` (1 s): a killed primary is replaced within
a few seconds. `SentinelDeployment.stop` ends every process it started (SIGKILL: nothing
here needs a clean shutdown), also at interpreter exit.
"""

from __future__ import annotations

import atexit
import functools
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.fakes.server import free_port

MASTER_NAME = "gw-primary"


def wait_for(ready: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    """`ready()`'s first truthy result, polled until `timeout_s`; AssertionError then.
    Connection errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            result = ready()
            if result:
                return result
            last = result
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {last!r}")
        time.sleep(0.05)


class RedisNode:
    """One redis-server process (a data node or a sentinel) on its own port."""

    def __init__(self, workdir: Path, name: str, password: str | None = None) -> None:
        self.port = free_port()
        self.name = name
        self.password = password
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> RedisNode:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", *args], stdout=log, stderr=log, cwd=self.dir
            )
        atexit.register(self.kill)
        wait_for(self.ping, f"{self.name} to answer on port {self.port}", 10)
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        timeouts = {"socket_timeout": 2, "socket_connect_timeout": 2}
        return redis.Redis(port=self.port, password=self.password, **timeouts, **kwargs)

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log()[-2000:]}")
        with self.client() as client:
            return bool(client.ping())

    def role(self) -> str:
        with self.client() as client:
            return str(client.execute_command("ROLE")[0].decode())

    def log(self) -> str:
        return (self.dir / "redis.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed host is (no goodbye to the sentinels)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SentinelDeployment:
    """A primary, its replica and three sentinels watching them as `MASTER_NAME`; with
    `password` the data nodes require it, with `sentinel_password` the sentinels do."""

    def __init__(
        self,
        workdir: Path,
        down_after_ms: int = 1000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.password = password
        self.data = [RedisNode(workdir, f"redis-{n}", password) for n in "ab"]
        self.sentinels = [RedisNode(workdir, f"sentinel-{i}", sentinel_password) for i in range(3)]

    @property
    def addresses(self) -> list[str]:
        """`redis.sentinels` for the gateway's config."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self) -> SentinelDeployment:
        try:
            primary, replica = self.data
            # No persistence; a replica's full sync starts at once (not after the 5 s
            # a diskless sync waits by default for more replicas to join).
            data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            data += ["--repl-diskless-sync-delay", "0"]
            if self.password is not None:
                data += ["--requirepass", self.password, "--masterauth", self.password]
            primary.start("--port", str(primary.port), *data)
            replica.start(
                "--port", str(replica.port), *data, "--replicaof", "127.0.0.1", str(primary.port)
            )
            wait_for(lambda: self._link_up(replica), "the replica to sync", 10)
            for sentinel in self.sentinels:
                sentinel.start(str(self._sentinel_conf(sentinel, primary.port)), "--sentinel")
            # Each sentinel knows the replica and both of its peers, and the three agree
            # that a failover could be authorized: only then is a failover test meaningful.
            for sentinel in self.sentinels:
                wait_for(functools.partial(self._ready, sentinel), f"{sentinel.name} sees all")
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel_conf(self, sentinel: RedisNode, primary_port: int) -> Path:
        path = sentinel.dir / "sentinel.conf"  # sentinels rewrite their config: one each
        path.write_text(
            f"port {sentinel.port}\n"
            "bind 127.0.0.1\n"
            f"dir {sentinel.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        with path.open("a") as conf:
            if self.password is not None:
                conf.write(f"sentinel auth-pass {MASTER_NAME} {self.password}\n")
            if sentinel.password is not None:  # its own, and what it tells its peers
                conf.write(f"requirepass {sentinel.password}\n")
                conf.write(f"sentinel sentinel-pass {sentinel.password}\n")
        return path

    @staticmethod
    def _link_up(replica: RedisNode) -> bool:
        with replica.client() as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    @staticmethod
    def _ready(sentinel: RedisNode) -> bool:
        with sentinel.client() as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
            peers = client.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
            client.execute_command("SENTINEL", "CKQUORUM", MASTER_NAME)  # raises if not
        return len(replicas) == 1 and len(peers) == 2

    def master_port(self, sentinel: RedisNode | None = None) -> int:
        """The primary's port as a sentinel (the first, by default) names it now."""
        with (sentinel or self.sentinels[0]).client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.data if n.port == port)

    @property
    def primary(self) -> RedisNode:
        return self.node(self.master_port())

    def failover(self) -> None:
        """`SENTINEL FAILOVER`: the replica is promoted without the primary being down."""
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    def wait_promoted(self, port: int, timeout_s: float = 30.0) -> None:
        """Until every sentinel names `port` the primary and that node says it is one."""
        wait_for(
            lambda: all(self.master_port(s) == port for s in self.sentinels),
            f"every sentinel to name port {port} the primary",
            timeout_s,
        )
        wait_for(lambda: self.node(port).role() == "master", f"{port} to be a master", timeout_s)

    def wait_demoted(self, node: RedisNode, timeout_s: float = 40.0) -> None:
        """Until the sentinels made an old primary that is still up a replica again (they
        do it some seconds after a failover, killing its client connections as they do)."""
        wait_for(lambda: node.role() == "slave", f"{node.name} to become a replica", timeout_s)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.kill()
