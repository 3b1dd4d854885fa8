"""Redis Sentinel (`redis.mode: sentinel`): the gateway follows the primary through a
failover without a restart.

Each test runs its own real deployment (tests/sentinel.py: a primary, a replica, three
sentinels, all `redis-server`) and, for the end-to-end ones, a real gateway in front of
the fake OpenAI upstream with the response cache on, a key with an rpm limit and a key
with a budget. Background threads send requests through the failover; every answer is
recorded and checked against the Redis-fault rules (rule 7: the cache and rate limits
fail open, budgets closed with a retryable 503, nothing else). After it, new cache
entries and rate windows must be on the new primary, read there directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import ConfigError, RedisConfig
from gateway.config.schema import parse_config
from gateway.redis.client import POOL_BUSY, make_redis, sentinels_of, shared_redis
from gateway.redis.pipe import RedisPipe
from gateway.telemetry import Metrics
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess
from tests.reliability.redis_failover import (
    REDIS_TIMEOUTS,
    Keys,
    Traffic,
    assert_exact_rpm_on,
    assert_new_cache_entry_on,
    assert_outages_end,
    assert_served_per_the_rules,
    fail_open_count,
    failover_config,
    limits_unavailable,
    start_traffic,
    wait_for_recovery,
)
from tests.sentinel import MASTER_NAME, SentinelDeployment, wait_for


def gateway_config(fake: FakeOpenAI, deployment: SentinelDeployment, keys: Keys) -> dict[str, Any]:
    redis = {"mode": "sentinel", "sentinels": deployment.addresses, "master_name": MASTER_NAME}
    return failover_config(fake, redis, keys.all())


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[SentinelDeployment]:
    started = SentinelDeployment(tmp_path / "sentinel").start()
    try:
        yield started
    finally:
        started.stop()


# --- end to end --------------------------------------------------------------------------


def test_a_sentinel_failover_is_followed_without_a_restart(
    deployment: SentinelDeployment, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """`SENTINEL FAILOVER` with the old primary still up: the sentinels promote the
    replica, then turn the old primary into its replica (killing its clients)."""
    keys = Keys.fresh()
    old = deployment.primary
    new = next(node for node in deployment.data if node is not old)
    gateway = GatewayProcess(gateway_config(fake_openai, deployment, keys), tmp_path).start()
    traffic: Traffic | None = None
    try:
        assert_exact_rpm_on(old, gateway, keys.rpm_before)
        assert_new_cache_entry_on(old, gateway, fake_openai, keys)
        traffic = start_traffic(gateway, keys)

        deployment.failover()
        deployment.wait_promoted(new.port)
        # The old primary is still up and still a master until the sentinels demote it,
        # seconds later: the gateway heard +switch-master and writes to the new one now
        # (the pipelined connection: admissions, as here, and cache writes alike).
        assert_exact_rpm_on(new, gateway, keys.rpm_after)
        was_master = old.role() == "master"
        deployment.wait_demoted(old)
        demoted_at = time.monotonic()
        wait_for_recovery(traffic, demoted_at)
        traffic.stop()

        assert_served_per_the_rules(traffic)
        assert old.role() == "slave" and new.role() == "master"
        assert was_master, "demoted before the checks: they showed nothing"
        assert_new_cache_entry_on(new, gateway, fake_openai, keys)
        assert_outages_end(gateway)
    finally:
        if traffic is not None:
            traffic.stop()
        gateway.stop()


def test_a_killed_primary_is_replaced_and_followed(
    deployment: SentinelDeployment, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGKILL on the primary: the sentinels see it down after 1 s, agree, and promote
    the replica; meanwhile the gateway fails open (budgets closed), then follows."""
    keys = Keys.fresh()
    old = deployment.primary
    new = next(node for node in deployment.data if node is not old)
    gateway = GatewayProcess(gateway_config(fake_openai, deployment, keys), tmp_path).start()
    traffic: Traffic | None = None
    try:
        assert_exact_rpm_on(old, gateway, keys.rpm_before)
        fail_open_before = fail_open_count(gateway)
        traffic = start_traffic(gateway, keys)

        killed_at = time.monotonic()
        old.kill()
        deployment.wait_promoted(new.port)
        wait_for_recovery(traffic, time.monotonic())
        traffic.stop()

        assert_served_per_the_rules(traffic)
        # Redis was gone for seconds: budgets were refused (closed), rate limits let
        # requests through unchecked (open), and the gateway said so once, then recovered.
        assert traffic.count("budget", killed_at, limits_unavailable) >= 1, traffic
        assert fail_open_count(gateway) > fail_open_before
        assert assert_outages_end(gateway) >= 1
        assert_new_cache_entry_on(new, gateway, fake_openai, keys)
        assert_exact_rpm_on(new, gateway, keys.rpm_after)
    finally:
        if traffic is not None:
            traffic.stop()
        gateway.stop()


# --- the clients on their own --------------------------------------------------------


def sentinel_config(deployment: SentinelDeployment, **overrides: Any) -> RedisConfig:
    return RedisConfig(
        mode="sentinel",
        sentinels=deployment.addresses,
        master_name=MASTER_NAME,
        **{**REDIS_TIMEOUTS, **overrides},
    )


def test_the_pipe_drops_a_demoted_master_and_connects_only_to_a_master(
    deployment: SentinelDeployment,
) -> None:
    """The pipelined connection on a primary that becomes a replica while connected (as
    REPLICAOF does, without killing clients): the READONLY reply drops the connection;
    a reconnect to an address the sentinels still name but that is no master fails."""
    a, b = deployment.primary, next(n for n in deployment.data if n is not deployment.primary)
    config = sentinel_config(deployment)

    async def scenario() -> None:
        pipe = RedisPipe(
            "redis://",
            connect_timeout_s=config.connect_timeout_s,
            reply_deadline_s=config.operation_deadline_s,
            sentinel=sentinels_of(config),
            master_name=MASTER_NAME,
        )
        try:
            assert await pipe.execute("SET", "pipe:k", "1") == b"OK"
            with b.client() as direct_b, a.client() as direct_a:
                direct_b.execute_command("REPLICAOF", "NO", "ONE")
                direct_a.execute_command("REPLICAOF", "127.0.0.1", str(b.port))
            # A write and a read sent together: the write's READONLY drops the connection,
            # failing the read behind it too (a replica's answer may be stale).
            write, read = pipe.execute("SET", "pipe:k", "2"), pipe.execute("GET", "pipe:k")
            outcomes = await asyncio.gather(write, read, return_exceptions=True)
            assert [type(o) for o in outcomes] == [RedisConnectionError] * 2, outcomes
            assert all("READONLY" in str(o) for o in outcomes), outcomes
            # The sentinels still name `a` (they need seconds to react): ROLE says replica.
            with pytest.raises(RedisConnectionError, match="is a slave"):
                await pipe.execute("SET", "pipe:k", "3")
            with a.client() as direct_a, b.client() as direct_b:
                direct_a.execute_command("REPLICAOF", "NO", "ONE")
                direct_b.execute_command("REPLICAOF", "127.0.0.1", str(a.port))
            assert await pipe.execute("SET", "pipe:k", "4") == b"OK"
            with a.client() as direct_a:
                assert direct_a.get("pipe:k") == b"4"
        finally:
            await pipe.aclose()

    asyncio.run(scenario())


def test_the_sentinel_pool_waits_for_a_free_connection(deployment: SentinelDeployment) -> None:
    """Back-pressure, not an outage (rule 17): with one connection, a second call waits
    for it (redis-py's own SentinelConnectionPool would raise at once), and one that
    waits past the pool's wait gets the pool-busy error."""
    config = sentinel_config(deployment, max_connections=1, socket_timeout_s=2.0)

    async def scenario() -> None:
        client = make_redis(config)
        try:
            started = time.monotonic()
            both = [client.blpop(["pool:none"], timeout=0.3) for _ in range(2)]
            assert await asyncio.gather(*both) == [None, None]
            assert time.monotonic() - started >= 0.6  # one after the other, on one connection
            holder = asyncio.ensure_future(client.blpop(["pool:none"], timeout=1.5))
            await asyncio.sleep(0.1)
            with pytest.raises(RedisConnectionError) as busy:
                await client.ping()  # waits 0.9 x the 1 s deadline, then gives up
            assert str(busy.value) == POOL_BUSY
            assert await holder is None
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_shared_client_finds_the_primary_through_the_sentinels(
    deployment: SentinelDeployment,
) -> None:
    """Both clients reach the primary the sentinels name, the replica sees their writes."""
    replica = next(n for n in deployment.data if n is not deployment.primary)

    async def scenario() -> None:
        shared = shared_redis(sentinel_config(deployment), Metrics(CollectorRegistry()))
        try:
            assert await shared.client.set("shared:pool", "p") is True
            assert await shared.pipe.execute("SET", "shared:pipe", "q") == b"OK"
        finally:
            await shared.aclose()

    asyncio.run(scenario())
    with deployment.primary.client() as client:
        assert client.mget("shared:pool", "shared:pipe") == [b"p", b"q"]
    with replica.client() as client:
        wait_for(lambda: client.exists("shared:pool", "shared:pipe") == 2, "replication", 5)


def test_the_url_carries_the_masters_password_and_db_and_the_sentinels_have_their_own(
    tmp_path: Path,
) -> None:
    """`redis.url` without a host gives the master's password and database (both clients
    use them), `redis.sentinel_password` the sentinels' own; a wrong one finds no master."""
    secured = SentinelDeployment(
        tmp_path / "secured", password="master-CANARY-pw", sentinel_password="sentinel-CANARY-pw"
    ).start()
    try:
        config = sentinel_config(
            secured, url="redis://:master-CANARY-pw@/3", sentinel_password="sentinel-CANARY-pw"
        )

        async def scenario(config: RedisConfig) -> None:
            shared = shared_redis(config, Metrics(CollectorRegistry()))
            try:
                assert await shared.client.set("secured:pool", "p") is True
                assert await shared.pipe.execute("SET", "secured:pipe", "q") == b"OK"
            finally:
                await shared.aclose()

        asyncio.run(scenario(config))
        with secured.primary.client(db=3) as client:
            assert client.mget("secured:pool", "secured:pipe") == [b"p", b"q"]
        with secured.primary.client() as client:  # database 0: nothing
            assert client.exists("secured:pool", "secured:pipe") == 0

        wrong = config.model_copy(update={"sentinel_password": "wrong"})
        with pytest.raises(RedisConnectionError, match="No master found"):
            asyncio.run(scenario(wrong))
    finally:
        secured.stop()


# --- config ------------------------------------------------------------------------------


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "g.yaml", environ or {})
    return raised.value.errors


def test_sentinel_mode_needs_its_sentinels_and_master_name() -> None:
    assert errors_of("redis: {mode: sentinel, master_name: m}") == [
        "g.yaml:1: redis.sentinels: required in sentinel mode: the sentinels' addresses, host:port"
    ]
    missing_name = errors_of("redis:\n  mode: sentinel\n  sentinels: ['a:26379']\n")
    assert len(missing_name) == 1 and missing_name[0].startswith(
        "g.yaml:1: redis.master_name: required in sentinel mode"  # the section's line
    )
    # An empty variable is no sentinel either.
    empty = errors_of("redis: {mode: sentinel, sentinels: '${S:-}', master_name: m}", {"S": ""})
    assert empty[0].startswith("g.yaml:1: redis.sentinels: required in sentinel mode")
    assert errors_of("redis: {mode: sentinel, sentinels: ['a:x'], master_name: m}") == [
        "g.yaml:1: redis.sentinels.0: not a sentinel address host:port: a:x"
    ]
    # Sentinel settings without sentinel mode are a mistake, not silently ignored.
    assert errors_of("redis: {url: 'redis://r', sentinels: ['a:1']}") == [
        "g.yaml:1: redis.sentinels: only with redis.mode: sentinel"
    ]
    # The master's address comes from the sentinels: a URL naming one is refused, and
    # the message does not show the URL (it may hold a password).
    (hosted,) = errors_of(
        "redis: {mode: sentinel, sentinels: ['a:1'], master_name: m, url: 'redis://:pw@h:1/0'}"
    )
    assert hosted.startswith("g.yaml:1: redis.url: in sentinel mode") and "pw" not in hosted
    assert errors_of("redis: {mode: clustered, url: 'redis://r'}")[0].startswith(
        "g.yaml:1: redis.mode"
    )


def test_sentinel_settings_take_the_environment() -> None:
    text = """
redis:
  mode: ${REDIS_MODE:-standalone}
  sentinels: ${REDIS_SENTINELS}
  master_name: ${REDIS_MASTER:?the name the sentinels monitor}
  url: ${REDIS_URL:-}
  sentinel_password: ${SENTINEL_PASSWORD:-}
"""
    environ = {
        "REDIS_MODE": "sentinel",
        "REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26380,s3",
        "REDIS_MASTER": "gw",
        "REDIS_URL": "rediss://:secret@/2",
    }
    config = parse_config(text, "g.yaml", environ).redis
    assert config is not None and config.mode == "sentinel"
    assert config.sentinel_addresses() == [("10.0.0.1", 26379), ("::1", 26380), ("s3", 26379)]
    assert (config.master_name, config.url, config.sentinel_password) == (
        "gw",
        "rediss://:secret@/2",
        None,
    )
    # An empty REDIS_URL in sentinel mode means no credentials, not "no Redis".
    no_url = parse_config(text, "g.yaml", {**environ, "REDIS_URL": ""}).redis
    assert no_url is not None and no_url.url is None
    # The same file in standalone mode with REDIS_URL unset: no Redis, as before.
    assert parse_config(text, "g.yaml", {"REDIS_MASTER": "gw"}).redis is None
    missing = errors_of(text, {"REDIS_MODE": "sentinel", "REDIS_SENTINELS": "a:1"})
    assert missing == [
        "g.yaml:5: redis.master_name: environment variable REDIS_MASTER is unset: "
        "the name the sentinels monitor"
    ]
