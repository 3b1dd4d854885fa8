"""Redis Cluster (`redis.mode: cluster`): each command goes to its slot's master, every
script's keys share a slot, a moved or migrating slot is followed, and a killed master is
ridden out and followed to its promoted replica without a restart.

The module runs its own real cluster (tests/redis_cluster.py: 3 masters with a replica
each, all `redis-server`), which these tests move slots of and kill nodes in; the cache,
limits, budget and shared-stats tests run on the session's cluster as well (their
`cluster` parameters). `INFO errorstats` on each node counts the MOVED and ASK replies
it gave: the proof that the gateway sent each command where it belonged.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import ConfigError, RedisConfig
from gateway.config.schema import parse_config
from gateway.keys.store import Caller
from gateway.limits.scripts import RedisLimitStore
from gateway.limits.store import new_admission
from gateway.redis.client import shared_redis
from gateway.redis.cluster import ClusterPipe
from gateway.telemetry import Metrics
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess
from tests.redis_cluster import RedisClusterDeployment
from tests.reliability.redis_failover import (
    REDIS_TIMEOUTS,
    Keys,
    Traffic,
    assert_outages_end,
    assert_served_per_the_rules,
    fail_open_count,
    failover_config,
    key,
    key_id,
    limits_unavailable,
    post,
    served,
    start_traffic,
    wait_for_recovery,
)
from tests.sentinel import RedisNode, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterDeployment]:
    started = RedisClusterDeployment(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterDeployment]:
    """A cluster for one test that kills nodes in it: a node restarted after its failover
    can take long to settle as a replica, so no test gets a cluster another one broke."""
    started = RedisClusterDeployment(tmp_path / "own-cluster").start()
    try:
        yield started
    finally:
        started.stop()


def cluster_config(cluster: RedisClusterDeployment, **overrides: Any) -> RedisConfig:
    return RedisConfig(mode="cluster", url=cluster.url, **{**REDIS_TIMEOUTS, **overrides})


def new_pipe(cluster: RedisClusterDeployment) -> ClusterPipe:
    config = cluster_config(cluster)
    return ClusterPipe(
        config.url or "",
        config.cluster_seeds(),
        connect_timeout_s=config.connect_timeout_s,
        reply_deadline_s=config.operation_deadline_s,
    )


def redirections(cluster: RedisClusterDeployment) -> Counter[str]:
    """MOVED and ASK replies the live nodes gave since `reset_stats`."""
    counts: Counter[str] = Counter()
    for node in cluster.live():
        with node.client() as client:
            for name, value in client.info("errorstats").items():
                if name in ("errorstat_MOVED", "errorstat_ASK"):
                    counts[name.removeprefix("errorstat_")] += int(value["count"])
    return counts


def reset_stats(cluster: RedisClusterDeployment) -> None:
    for node in cluster.live():
        with node.client() as client:
            client.config_resetstat()


def node_id(node: RedisNode) -> str:
    with node.client() as client:
        return str(client.execute_command("CLUSTER MYID").decode())


def slot_of(cluster: RedisClusterDeployment, name: str) -> int:
    with cluster.client() as client:
        return int(client.cluster_keyslot(name))


def empty_slot_key(cluster: RedisClusterDeployment) -> tuple[str, int]:
    """A key whose slot holds nothing: a slot that can be moved without moving data."""
    with cluster.client() as client:
        while True:
            name = f"probe:{uuid.uuid4().hex}"
            slot = int(client.cluster_keyslot(name))
            if int(client.cluster_countkeysinslot(slot)) == 0:
                return name, slot


def slot_to_move(cluster: RedisClusterDeployment) -> tuple[str, int, RedisNode, RedisNode]:
    """A key of an empty slot, the slot, its master and another master to move it to."""
    name, slot = empty_slot_key(cluster)
    source = cluster.master_of(name)
    return name, slot, source, next(m for m in cluster.masters() if m.port != source.port)


def set_slot(nodes: list[RedisNode], slot: int, *args: str) -> None:
    for node in nodes:
        with node.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, *args)


# --- the pipelined connection ----------------------------------------------------------


def test_each_command_goes_straight_to_its_slots_master(cluster: RedisClusterDeployment) -> None:
    """A batch of keys over every master, split by master and put back in order; no
    node had to redirect a command."""

    async def main() -> None:
        pipe = new_pipe(cluster)
        try:
            await pipe.execute("PING")  # learns the layout
            reset_stats(cluster)
            names = [f"spread:{uuid.uuid4().hex}" for _ in range(60)]
            writes = await pipe.execute_many([("SET", n, n.upper()) for n in names])
            assert writes == [b"OK"] * len(names)
            reads = await pipe.execute_many([("GET", n) for n in names])
            assert reads == [n.upper().encode() for n in names]
            assert await pipe.execute("GET", names[0]) == names[0].upper().encode()
        finally:
            await pipe.aclose()
        assert redirections(cluster) == Counter()
        assert {cluster.master_of(n).port for n in names} == {m.port for m in cluster.masters()}

    asyncio.run(main())


def test_a_gateway_keys_counters_share_a_slot_and_keys_spread_over_the_masters(
    cluster: RedisClusterDeployment,
) -> None:
    """Admissions and settles of 30 gateway keys with rpm, tpm and budget limits: every
    counter of one key on one master (its hash tag), the keys over all masters, and no
    CROSSSLOT (a script error) and no redirection."""

    async def main() -> None:
        redis = shared_redis(cluster_config(cluster), Metrics(CollectorRegistry()))
        store = RedisLimitStore(redis, 30.0, 60.0)
        callers = [
            Caller(
                key_id=f"k{i}-{uuid.uuid4().hex[:6]}",
                name=f"k{i}",
                rpm=5,
                tpm=10_000,
                budget_usd=10.0,
            )
            for i in range(30)
        ]
        try:
            loader = Caller(key_id=uuid.uuid4().hex, name="loader")
            await store.admit(new_admission(loader, 10, 0.1))  # loads the script
            reset_stats(cluster)
            for caller in callers:
                decisions = [await store.admit(new_admission(caller, 10, 0.1)) for _ in range(6)]
                assert [d.reason for d in decisions] == [None] * 5 + ["rpm"]
        finally:
            await redis.aclose()
        assert redirections(cluster) == Counter()
        homes: dict[str, set[int]] = {}
        for master in cluster.masters():
            with master.client() as client:
                for name in client.scan_iter(match="gw:lim:*", count=1000):
                    tag = name.decode().split("{", 1)[1].split("}", 1)[0]
                    homes.setdefault(tag, set()).add(master.port)
        mine = {c.key_id: homes.get(c.key_id, set()) for c in callers}
        assert all(len(ports) == 1 for ports in mine.values()), mine
        assert len(set().union(*mine.values())) == 3, "30 keys all on fewer than 3 masters"

    asyncio.run(main())


def test_a_moved_slot_is_followed_then_learnt(cluster: RedisClusterDeployment) -> None:
    """A slot moved to another master (an empty one: `CLUSTER SETSLOT ... NODE`): the
    first command gets MOVED and is sent again there; the next goes there at once."""
    name, slot, source, target = slot_to_move(cluster)

    async def main() -> None:
        pipe = new_pipe(cluster)
        try:
            await pipe.execute("PING")
            set_slot([target, *cluster.masters()], slot, "NODE", node_id(target))
            wait_for(lambda: cluster.master_of(name).port == target.port, "the slot to move")
            reset_stats(cluster)
            assert await pipe.execute("SET", name, "moved") == b"OK"
            assert redirections(cluster) == Counter({"MOVED": 1})
            await asyncio.sleep(0.3)  # the pipe asks for the whole layout again, in time
            assert await pipe.execute_many([("GET", name), ("SET", name, "again")]) == [
                b"moved",
                b"OK",
            ]
            assert redirections(cluster) == Counter({"MOVED": 1})
        finally:
            await pipe.aclose()
            with target.client() as client:
                client.delete(name)
            set_slot([source, *cluster.masters()], slot, "NODE", node_id(source))
        with target.client() as client:
            assert client.dbsize() >= 0

    asyncio.run(main())


def test_a_migrating_slot_is_asked_of_its_new_master(cluster: RedisClusterDeployment) -> None:
    """A slot half way through a migration: a key the old master does not have is answered
    ASK, and the command goes to the new master after ASKING; once the migration ends,
    MOVED sends it there for good."""
    name, slot, source, target = slot_to_move(cluster)

    async def main() -> None:
        pipe = new_pipe(cluster)
        try:
            await pipe.execute("PING")
            set_slot([target], slot, "IMPORTING", node_id(source))
            set_slot([source], slot, "MIGRATING", node_id(target))
            reset_stats(cluster)
            assert await pipe.execute("SET", name, "imported") == b"OK"
            assert redirections(cluster) == Counter({"ASK": 1})
            with target.client() as client:
                assert client.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 1
            set_slot([target, *cluster.masters()], slot, "NODE", node_id(target))
            assert await pipe.execute("GET", name) == b"imported"
        finally:
            await pipe.aclose()
            with target.client() as client:
                client.delete(name)
            set_slot([source, *cluster.masters()], slot, "NODE", node_id(source))

    asyncio.run(main())


def test_a_frozen_master_times_out_then_its_replica_is_found(
    own_cluster: RedisClusterDeployment,
) -> None:
    """SIGSTOP on a master: alive but silent, as a master cut off by the network. A call
    to its slots times out within the deadline (Redis unavailable, not a hang); once the
    cluster promoted its replica, the same pipe finds it by itself. (A cluster of its
    own: a node resumed after its failover can take long to settle, and a fresh start
    of it in the module's cluster made the tests after this one flaky.)"""
    cluster = own_cluster
    name = f"frozen:{uuid.uuid4().hex}"
    victim = cluster.master_of(name)
    assert victim.proc is not None

    async def main() -> None:
        pipe = new_pipe(cluster)
        try:
            assert await pipe.execute("SET", name, "before") == b"OK"
            victim.proc.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await pipe.execute("GET", name)
            assert time.monotonic() - started < 2 * REDIS_TIMEOUTS["operation_deadline_s"]
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert await pipe.execute("SET", name, "after") == b"OK"
                    break
                except (RedisConnectionError, RedisTimeoutError):
                    assert time.monotonic() < deadline, "the replica was never found"
                    await asyncio.sleep(0.1)
        finally:
            await pipe.aclose()

    asyncio.run(main())
    cluster.kill(victim)  # SIGKILL ends a stopped process too
    assert cluster.master_of(name).port != victim.port


# --- a master killed under traffic -----------------------------------------------------


def gateway_config(fake: FakeOpenAI, cluster: RedisClusterDeployment, keys: list[Any]) -> Any:
    redis = {"mode": "cluster", "url": cluster.url, "nodes": cluster.seeds}
    return failover_config(fake, redis, keys)


def budget_home(cluster: RedisClusterDeployment, gateway: GatewayProcess, name: str) -> RedisNode:
    """The master that holds a key's budget counter."""
    return cluster.master_of(f"gw:lim:{{{key_id(gateway, name)}}}:b:total")


def test_a_killed_master_is_ridden_out_and_its_replica_followed(
    own_cluster: RedisClusterDeployment, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGKILL on the master of a budgeted key's slot: the cluster promotes its replica
    after the node timeout (1 s). Meanwhile the cache and rate limits fail open and that
    key's budget closed (the retryable 503); keys whose counters live on the other
    masters are checked as before, throughout (with `cluster-require-full-coverage no`,
    as the README advises: by default every master answers CLUSTERDOWN until the replica
    is promoted). Then it recovers by itself, exact."""
    cluster = own_cluster
    full_coverage(cluster, False)
    keys = Keys.fresh()
    elsewhere = [
        key(f"cl-budget-{i}", budget_usd=1_000_000, budget_period="total") for i in range(8)
    ]
    config = gateway_config(fake_openai, cluster, [*keys.all(), *elsewhere])
    gateway = GatewayProcess(config, tmp_path).start()
    traffic: Traffic | None = None
    try:
        victim = budget_home(cluster, gateway, keys.budget["name"])
        other = next(
            (k for k in elsewhere if budget_home(cluster, gateway, k["name"]).port != victim.port),
            None,
        )
        assert other is not None, "8 keys' counters all on one master: pick more keys"
        fail_open_before = fail_open_count(gateway)
        traffic = start_traffic(gateway, keys)
        traffic.add("elsewhere", other["key"])
        traffic.wait_until(lambda: traffic.count("elsewhere", 0, served) >= 3, "traffic")

        killed_at = time.monotonic()
        cluster.kill(victim)
        promoted = cluster.wait_failed_over(victim)
        wait_for_recovery(traffic, time.monotonic())
        traffic.stop()

        elsewhere_samples = traffic.samples.pop("elsewhere")
        assert_served_per_the_rules(traffic)
        assert [s.status for s in elsewhere_samples] == [200] * len(elsewhere_samples)
        assert traffic.count("budget", killed_at, limits_unavailable) >= 1, traffic
        assert fail_open_count(gateway) >= fail_open_before
        assert assert_outages_end(gateway) >= 1
        assert budget_home(cluster, gateway, keys.budget["name"]).port == promoted.port

        # After it, exact again: a fresh key's rpm wherever its window lives.
        statuses = [
            post(gateway, keys.rpm_after["key"], uuid.uuid4().hex).status_code for _ in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
    finally:
        if traffic is not None:
            traffic.stop()
        gateway.stop()


def full_coverage(cluster: RedisClusterDeployment, required: bool) -> None:
    """`cluster-require-full-coverage` on every live node: with `no`, a master down leaves
    the others serving their slots; with `yes` (Redis' default) the cluster stops."""
    for node in cluster.live():
        with node.client() as client:
            client.config_set("cluster-require-full-coverage", "yes" if required else "no")


def test_a_cluster_that_lost_slots_is_unavailable_not_an_error(
    own_cluster: RedisClusterDeployment,
) -> None:
    """A master and its replica both gone: the cluster answers CLUSTERDOWN for every slot
    (full coverage required, Redis' default). The pipe raises a ConnectionError, which
    the gateway counts as Redis being unavailable (not a script error, not a 500), and
    works again once the nodes are back."""
    cluster = own_cluster
    victim = cluster.masters()[0]
    replicas = [n for n in cluster.live() if _replica_of(n, victim)]
    assert replicas, "the victim has no replica"
    survivor = next(n for n in cluster.masters() if n is not victim)

    async def main() -> None:
        pipe = new_pipe(cluster)
        try:
            await pipe.execute("PING")
            for node in [victim, *replicas]:
                cluster.kill(node)
            with survivor.client() as client:
                wait_for(
                    lambda: client.execute_command("CLUSTER INFO")["cluster_state"] == "fail",
                    "the cluster to say it is down",
                )
            with pytest.raises(RedisConnectionError):
                await pipe.execute("GET", f"down:{uuid.uuid4().hex}")
            for node in [victim, *replicas]:
                cluster.restart(node)
            assert await pipe.execute("SET", f"up:{uuid.uuid4().hex}", "1") == b"OK"
        finally:
            await pipe.aclose()

    asyncio.run(main())


def _replica_of(node: RedisNode, master: RedisNode) -> bool:
    with node.client() as client:
        role = client.execute_command("ROLE")
    return bool(role[0] == b"slave" and int(role[2]) == master.port)


# --- config ------------------------------------------------------------------------------


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "g.yaml", environ or {})
    return raised.value.errors


def test_cluster_mode_needs_a_node_and_database_0() -> None:
    assert errors_of("redis: {mode: cluster}") == ["g.yaml:1: redis.url: Field required"]
    assert errors_of("redis: {mode: cluster, url: 'redis://h:7000/3'}") == [
        "g.yaml:1: redis.url: a Redis Cluster has only database 0"
    ]
    # No host: refused, and the message does not show the URL (it may hold a password).
    (hostless,) = errors_of("redis: {mode: cluster, url: 'redis://:pw-CANARY-5e1f@/0'}")
    assert hostless.startswith("g.yaml:1: redis.url: not a redis:// or rediss:// URL with a host")
    assert "CANARY" not in hostless
    assert errors_of("redis: {url: 'redis://h', nodes: ['h2:7001']}") == [
        "g.yaml:1: redis.nodes: only with redis.mode: cluster"
    ]
    assert errors_of("redis: {mode: cluster, url: 'redis://h', master_name: m}") == [
        "g.yaml:1: redis.master_name: only with redis.mode: sentinel"
    ]
    assert errors_of("redis: {mode: cluster, url: 'redis://h', nodes: ['h:x']}") == [
        "g.yaml:1: redis.nodes.0: not a node address host:port: h:x"
    ]


def test_cluster_settings_take_the_environment() -> None:
    text = """
redis:
  mode: ${REDIS_MODE:-standalone}
  url: ${REDIS_URL}
  nodes: ${REDIS_NODES:-}
"""
    environ = {
        "REDIS_MODE": "cluster",
        "REDIS_URL": "rediss://:secret@h1:7000",
        "REDIS_NODES": "h2:7001, [::1]:7002,h3",
    }
    config = parse_config(text, "g.yaml", environ).redis
    assert config is not None and config.mode == "cluster"
    assert config.cluster_seeds() == [("h1", 7000), ("h2", 7001), ("::1", 7002), ("h3", 6379)]
