"""Self-tests of tests/redis_cluster.py: the harness starts a real cluster, keys spread
over its masters, and a killed master's replica takes over with the data it had.

One deployment for the module (starting one takes seconds); the failover test runs last
(it leaves a master dead).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_cluster import RedisClusterDeployment


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterDeployment]:
    workdir: Path = tmp_path_factory.mktemp("cluster")
    deployment = RedisClusterDeployment(workdir).start()
    try:
        yield deployment
    finally:
        deployment.stop()


def test_three_masters_with_replicas_and_keys_spread(cluster: RedisClusterDeployment) -> None:
    assert len(cluster.nodes) == 6
    assert len(cluster.seeds) == 6
    masters = cluster.masters()
    assert len(masters) == 3
    assert all(node.role() == "slave" for node in cluster.nodes if node not in masters)
    for node in cluster.nodes:
        with node.client() as client:
            assert client.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
    assert cluster.url.startswith("redis://127.0.0.1:")
    assert int(cluster.url.rsplit(":", 1)[1].split("/")[0]) in {m.port for m in masters}

    with cluster.client() as client:
        # Hash tags pick the slot: different tags may spread, a shared one never does.
        owners = {cluster.master_of(f"{{tag-{i}}}:k") for i in range(30)}
        assert len(owners) == 3
        same = {client.cluster_keyslot(f"{{same}}:{i}") for i in range(5)}
        assert len(same) == 1
        assert len({cluster.master_of(f"{{same}}:{i}") for i in range(5)}) == 1
        tagged = {client.cluster_keyslot(f"{{tag-{i}}}:k") for i in range(30)}
        assert len(tagged) > 1
        client.set("{same}:0", "v")
        assert client.get("{same}:0") == b"v"
        with cluster.master_of("{same}:0").client() as direct:
            assert direct.get("{same}:0") == b"v"


def test_failover_keeps_replicated_data(
    cluster: RedisClusterDeployment,
) -> None:
    key = "{failover}:value"
    dead = cluster.master_of(key)
    with dead.client() as direct:
        direct.set(key, "kept")
        assert direct.execute_command("WAIT", 1, 1000) == 1  # the replica has it

    started = time.monotonic()
    cluster.kill(dead)
    new = cluster.wait_failed_over(dead)
    took_s = time.monotonic() - started
    assert new is not dead
    assert new.role() == "master"
    assert cluster.master_of(key) is new
    assert took_s < 15, took_s
    with cluster.client() as client:
        assert client.get(key) == b"kept"

    # (No restart of the dead node here: one that lost its slots to its replica can take
    # long to settle as a replica on a loaded machine; no test relies on that.)
