"""A real Redis Cluster on loopback: three masters with one replica each, by default.

Every node is `redis-server --cluster-enabled yes` on a free 127.0.0.1 port (its cluster
bus on port + 10000, so that one must be free too), in its own work directory with its
own `nodes.conf`, with no persistence; `redis-cli --cluster create` assigns the slots
and pairs the replicas. A master silent for `node_timeout_ms` (1 s) is failed: its
replica is promoted within a few seconds. A killed node restarted on its old port and
directory rejoins with its old identity and, its slots now served by its promoted
replica, comes back as that node's replica (empty: nothing here persists).
`RedisClusterDeployment.stop` ends every process it started (SIGKILL: nothing here
needs a clean shutdown), also at interpreter exit.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.fakes.server import free_port
from tests.sentinel import RedisNode, wait_for

BUS_OFFSET = 10000  # a cluster node's bus port is its port + this (cluster-port 0)
SLOTS = 16384

# A slot range as CLUSTER SLOTS names it: (first slot, last slot), both inclusive.
SlotRange = tuple[int, int]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A free port whose bus port is free too, and neither in `taken` (the ports and bus
    ports of the deployment's other nodes: the OS does not know them until they start)."""
    for _ in range(200):
        port = free_port()
        bus = port + BUS_OFFSET
        if bus < 65536 and not {port, bus} & taken and _bindable(bus):
            return port
    raise AssertionError("no free port with a free bus port (port + 10000) found")


class RedisClusterDeployment:
    """`masters` masters with `replicas_per_master` replicas each; with `password` every
    node requires it (and replicas use it to sync)."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 1000,
        password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.nodes: list[RedisNode] = []
        taken: set[int] = set()
        for i in range(masters * (1 + replicas_per_master)):
            node = RedisNode(workdir, f"cluster-{i}", password)
            node.port = cluster_port(taken)  # RedisNode's own pick ignores the bus port
            taken |= {node.port, node.port + BUS_OFFSET}
            self.nodes.append(node)
        # Per node, the redis-server arguments: `restart` starts it again with the same.
        self._args: dict[str, list[str]] = {node.name: self._node_args(node) for node in self.nodes}
        # Per node name, the slots it served as a master when `kill` killed it.
        self._killed_slots: dict[str, list[SlotRange]] = {}

    def _node_args(self, node: RedisNode) -> list[str]:
        # No persistence; a replica's full sync starts at once (not after the 5 s a
        # diskless sync waits by default for more replicas to join). nodes.conf is
        # relative to the node's own directory (its cwd): one each, kept for a restart.
        args = ["--port", str(node.port), "--bind", "127.0.0.1"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args

    # --- addresses -------------------------------------------------------------
    @property
    def seeds(self) -> list[str]:
        """Every node's `host:port`, dead or alive: startup nodes for a cluster client."""
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        """A `redis://` URL of the first node (in `nodes` order) that is a live master now:
        any node would do for a cluster client, a master is what a plain client needs."""
        node = next(iter(self.masters()), self.nodes[0])
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{node.port}/0"

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def live(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.alive]

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> RedisClusterDeployment:
        try:
            for node in self.nodes:
                node.start(*self._args[node.name])
            self._create()
            self.wait_ok()
            wait_for(self._paired, "every master to have its replicas linked", 30)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        command = ["redis-cli", "--cluster", "create", *self.seeds]
        command += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        if self.password is not None:
            command += ["-a", self.password, "--no-auth-warning"]
        # It assigns the slots, pairs the replicas and waits until the nodes agree.
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
        (self.workdir / "cluster-create.log").write_bytes(done.stdout + done.stderr)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise AssertionError(f"redis-cli --cluster create failed: {output[-3000:]}")

    def _paired(self) -> bool:
        masters = self.masters()
        if len(masters) != self.master_count:
            return False
        for master in masters:
            with master.client() as client:
                linked = int(client.info("replication").get("connected_slaves", 0))
            if linked != self.replicas_per_master:
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    # --- what the cluster says -------------------------------------------------
    def _slot_map(self, node: RedisNode) -> dict[SlotRange, int]:
        """Each slot range and the port of its master, as `node` sees it."""
        with node.client() as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        return {(int(r[0]), int(r[1])): int(r[2][1]) for r in ranges}

    def _state_ok(self, node: RedisNode) -> bool:
        with node.client() as client:
            info = client.execute_command("CLUSTER INFO")
        return bool(
            info["cluster_state"] == "ok"
            and int(info["cluster_slots_assigned"]) == SLOTS
            and int(info["cluster_known_nodes"]) == len(self.nodes)
        )

    @staticmethod
    def _link_ok(node: RedisNode) -> bool:
        """A master, or a replica whose link to its master is up."""
        with node.client() as client:
            replication = client.info("replication")
        return bool(replication["role"] == "master" or replication["master_link_status"] == "up")

    def _settled(self) -> bool:
        live = self.live()
        if not live:
            return False
        maps = [self._slot_map(node) for node in live]
        return (
            all(self._state_ok(node) for node in live)
            and all(m == maps[0] for m in maps)  # every node names the same masters
            and sum(last - first + 1 for first, last in maps[0]) == SLOTS
            and all(self.node(port).alive for port in maps[0].values())
            and all(self._link_ok(node) for node in live)
        )

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every live node says cluster_state:ok, all of them map every slot to the
        same live master, and every live replica's link to its master is up."""
        wait_for(self._settled, "the cluster to settle (cluster_state:ok everywhere)", timeout_s)

    def masters(self) -> list[RedisNode]:
        """The live nodes that say they are masters (in `nodes` order)."""
        found = []
        for node in self.live():
            try:
                if node.role() == "master":
                    found.append(node)
            except (redis.RedisError, OSError):
                continue  # just killed, or not answering yet: not a master we can use
        return found

    def _any_live(self) -> RedisNode:
        for node in self.live():
            try:
                node.ping()
            except (redis.RedisError, OSError):
                continue
            return node
        raise AssertionError("no live cluster node answers")

    def master_of(self, key: str) -> RedisNode:
        """The node a live node names the master of `key`'s slot now."""
        asked = self._any_live()
        with asked.client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for (first, last), port in self._slot_map(asked).items():
            if first <= slot <= last:
                return self.node(port)
        raise AssertionError(f"{asked.name} names no master for slot {slot} ({key!r})")

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A sync cluster client, for a test to read or write the cluster directly (close
        it after use). Seeded with one live node: it learns the others from that one."""
        seed = self._any_live()
        return redis.RedisCluster(
            host="127.0.0.1",
            port=seed.port,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=2,
            **kwargs,
        )

    # --- faults ----------------------------------------------------------------
    def kill(self, node: RedisNode) -> None:
        """SIGKILL, as a crashed host (no goodbye to its peers). The slots it served are
        noted first, for `wait_failed_over`."""
        others = [n for n in self.live() if n is not node]
        if others and node.alive:
            try:
                slot_map = self._slot_map(others[0])
                self._killed_slots[node.name] = [r for r, p in slot_map.items() if p == node.port]
            except (redis.RedisError, OSError):
                self._killed_slots.pop(node.name, None)
        node.kill()

    def _dead_slots(self, dead: RedisNode) -> list[SlotRange]:
        slots = self._killed_slots.get(dead.name)
        if slots is None:  # killed some other way: live nodes still name it until failover
            slot_map = self._slot_map(self._any_live())
            slots = [r for r, p in slot_map.items() if p == dead.port]
        if not slots:
            raise AssertionError(f"{dead.name} served no slots: there is nothing to fail over")
        return slots

    def _new_master(self, dead: RedisNode, slots: list[SlotRange]) -> RedisNode | None:
        owners: set[int] = set()
        live = self.live()
        for node in live:
            slot_map = self._slot_map(node)
            for first, last in slots:
                # The dead master's ranges, whole, under one owner (no resharding here).
                owners.add(slot_map.get((first, last), -1))
        if len(owners) != 1:
            return None
        port = owners.pop()
        if port in (-1, dead.port):
            return None
        new = self.node(port)
        if not (new.alive and new.role() == "master"):
            return None
        if not all(self._state_ok(node) for node in live):
            return None
        return new

    def wait_failed_over(self, dead: RedisNode, timeout_s: float = 30) -> RedisNode:
        """Until every live node names another live node, which says it is a master, the
        master of the slots `dead` served and says cluster_state:ok; that node."""
        slots = self._dead_slots(dead)
        new: RedisNode = wait_for(
            lambda: self._new_master(dead, slots), f"{dead.name}'s slots to fail over", timeout_s
        )
        return new

    def restart(self, node: RedisNode, timeout_s: float = 30) -> None:
        """Start a killed node again with its port, directory and arguments: it rejoins
        with the identity in its nodes.conf (as a replica of whoever took its slots over;
        on a loaded machine that can take longer than `timeout_s`: tests restart only
        nodes whose slots nobody took over)."""
        if node.alive:
            raise AssertionError(f"{node.name} is still running")
        node.start(*self._args[node.name])
        self._killed_slots.pop(node.name, None)
        self.wait_ok(timeout_s)
        wait_for(node.ping, f"{node.name} to answer", timeout_s)


@dataclass(frozen=True)
class RedisBackend:
    """The shared Redis of a test run twice: one `redis-server`, then a Redis Cluster.
    `section()` is the gateway config's `redis:`; `client()` reads what it wrote."""

    mode: str  # standalone | cluster
    url: str

    def section(self, **settings: Any) -> dict[str, Any]:
        return {"mode": self.mode, "url": self.url, **settings}

    def client(self) -> redis.Redis | redis.RedisCluster:
        timeouts = {"socket_timeout": 2, "socket_connect_timeout": 2}
        if self.mode == "cluster":
            return redis.RedisCluster.from_url(self.url, **timeouts)
        return redis.Redis.from_url(self.url, **timeouts)


def backend_of(request: Any) -> RedisBackend:
    """The `RedisBackend` a fixture parametrized with "standalone" / "cluster" asks for:
    the session's `redis_server` or `redis_cluster` (tests/conftest.py)."""
    if request.param == "cluster":
        return RedisBackend("cluster", request.getfixturevalue("redis_cluster").url)
    return RedisBackend("standalone", request.getfixturevalue("redis_server").url)
