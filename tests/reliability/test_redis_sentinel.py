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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.cache.key import STORAGE_PREFIX
from gateway.config import ConfigError, RedisConfig
from gateway.config.schema import parse_config
from gateway.redis.client import POOL_BUSY, make_redis, sentinels_of, shared_redis
from gateway.redis.pipe import RedisPipe
from gateway.telemetry import Metrics
from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.governance import ADMIN_KEY, admin, bearer
from tests.gatewayproc import GatewayProcess
from tests.promtext import parse
from tests.sentinel import MASTER_NAME, RedisNode, SentinelDeployment, wait_for

# Short, as in production, but not so short that a loaded 2-core test box times out.
REDIS_TIMEOUTS = {"socket_timeout_s": 0.5, "connect_timeout_s": 0.5, "operation_deadline_s": 1.0}
# No request may hang on the failover: a few Redis deadlines at most (cache, limits).
SLOW_S = 5.0
PACE_S = 0.02  # between one thread's requests: traffic, not a load test
UNAVAILABLE, RECOVERED = "redis unavailable", "redis available again"
RPM = 3


def key(name: str, **limits: Any) -> dict[str, Any]:
    return {"name": name, "key": f"gw-{name}-CANARY-{uuid.uuid4().hex[:12]}", **limits}


@dataclass
class Keys:
    """The keys of one test: fresh ones each time, so no window carries over."""

    open: dict[str, Any]  # an rpm limit that is checked and never reached
    budget: dict[str, Any]  # a budget that is checked and never reached
    cached: dict[str, Any]  # no limits: its one prompt is answered from the cache
    rpm_before: dict[str, Any]  # exact rpm before the failover
    rpm_after: dict[str, Any]  # exact rpm after it, on a window the new primary holds

    @classmethod
    def fresh(cls) -> Keys:
        return cls(
            key("sent-open", rpm=1_000_000),
            key("sent-budget", budget_usd=1_000_000, budget_period="total"),
            key("sent-cache"),
            key("sent-rpm-before", rpm=RPM),
            key("sent-rpm-after", rpm=RPM),
        )

    def all(self) -> list[dict[str, Any]]:
        return [self.open, self.budget, self.cached, self.rpm_before, self.rpm_after]


def gateway_config(fake: FakeOpenAI, deployment: SentinelDeployment, keys: Keys) -> dict[str, Any]:
    return {
        "server": {"request_timeout_s": 10},
        "auth": {"mode": "keys", "keys": keys.all(), "admin_keys": [ADMIN_KEY]},
        "providers": {
            "fake": {"kind": "openai", "base_url": f"{fake.base_url}/v1", "api_key": OPENAI_KEY}
        },
        "models": [
            {
                "name": "gpt-test",
                "provider": "fake",
                "model": "gpt-4o-mini",
                "input_price_per_mtok_usd": 1,
                "output_price_per_mtok_usd": 1,
            }
        ],
        "routing": {"same_deployment_retries": 0},
        "limits": {"window_s": 60, "key_sync_interval_s": 0.2},
        "cache": {"enabled": True},
        "redis": {
            "mode": "sentinel",
            "sentinels": deployment.addresses,
            "master_name": MASTER_NAME,
            **REDIS_TIMEOUTS,
        },
    }


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[SentinelDeployment]:
    started = SentinelDeployment(tmp_path / "sentinel").start()
    try:
        yield started
    finally:
        started.stop()


# --- traffic -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    started: float
    took_s: float
    status: int
    cache: str | None
    body: Any
    retry_after: str | None


class Traffic:
    """Threads sending chat requests until stopped; every answer is recorded."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.samples: dict[str, list[Sample]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, stream: str, api_key: str, cached: bool = False) -> None:
        self.samples[stream] = []
        thread = threading.Thread(target=self._loop, args=(stream, api_key, cached), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self, stream: str, api_key: str, cached: bool) -> None:
        prompt = f"cache me {uuid.uuid4().hex}"  # the cached stream's one prompt
        headers = bearer(api_key)
        with httpx.Client(base_url=self.gateway.base_url, headers=headers, timeout=15) as c:
            while not self._stop.is_set():
                text = prompt if cached else f"fresh {uuid.uuid4().hex}"
                started = time.monotonic()
                response = c.post("/chat/completions", json=chat_body(text))
                self.samples[stream].append(
                    Sample(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("x-gateway-cache"),
                        response.json(),
                        response.headers.get("retry-after"),
                    )
                )
                self._stop.wait(PACE_S)

    def since(self, stream: str, start: float) -> list[Sample]:
        return [s for s in self.samples[stream] if s.started >= start]

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self}"
            time.sleep(0.02)

    def count(self, stream: str, start: float, ok: Callable[[Sample], bool]) -> int:
        return sum(map(ok, self.since(stream, start)))

    def __str__(self) -> str:
        summary = {}
        for stream, samples in self.samples.items():
            counts: dict[tuple[int, str | None], int] = {}
            for s in list(samples):
                counts[s.status, s.cache] = counts.get((s.status, s.cache), 0) + 1
            summary[stream] = (counts, samples[-1].body if samples else None)
        return repr(summary)[:3000]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)


def chat_body(text: str) -> dict[str, Any]:
    return {"model": "gpt-test", "max_tokens": 10, "messages": [{"role": "user", "content": text}]}


def served(s: Sample) -> bool:
    return s.status == 200


def hit(s: Sample) -> bool:
    return s.status == 200 and s.cache == "HIT"


def limits_unavailable(s: Sample) -> bool:
    return s.status == 503 and s.body["error"]["code"] == "limits_unavailable"


def start_traffic(gateway: GatewayProcess, keys: Keys) -> Traffic:
    traffic = Traffic(gateway)
    traffic.add("open", keys.open["key"])
    traffic.add("budget", keys.budget["key"])
    traffic.add("cached", keys.cached["key"], cached=True)
    traffic.wait_until(lambda: all(traffic.count(s, 0, served) >= 3 for s in traffic.samples), "")
    traffic.wait_until(lambda: traffic.count("cached", 0, hit) >= 1, "a cache hit")
    return traffic


def wait_for_recovery(traffic: Traffic, since: float) -> None:
    """Until the budgeted key is served again (admissions reach the new primary) and the
    cached prompt hits again, both after `since`."""
    traffic.wait_until(lambda: traffic.count("budget", since, served) >= 3, "budgets back", 20)
    traffic.wait_until(lambda: traffic.count("cached", since, hit) >= 3, "cache hits back", 20)


def assert_served_per_the_rules(traffic: Traffic) -> None:
    """Throughout: the cache and the rate-limited key served (fail open), the budgeted
    key served or refused with the documented retryable 503; nothing else, none slow."""
    for stream, samples in traffic.samples.items():
        assert samples, stream
        slow = [round(s.took_s, 2) for s in samples if s.took_s >= SLOW_S]
        assert not slow, f"{stream}: requests took {slow} s during the failover"
        if stream == "budget":
            other = [s for s in samples if not served(s) and not limits_unavailable(s)]
            assert not other, other[:3]
            for refused in filter(limits_unavailable, samples):
                assert refused.retry_after is not None and int(refused.retry_after) >= 1
        else:
            assert [s.status for s in samples] == [200] * len(samples), [
                s for s in samples if s.status != 200
            ][:3]


# --- checks on the new primary ---------------------------------------------------------


def post(gateway: GatewayProcess, api_key: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=chat_body(text),
        headers=bearer(api_key),
        timeout=15,
    )


def cache_entries_with(node: RedisNode, marker: str) -> list[bytes]:
    """The cache entries on `node` whose stored answer holds `marker`."""
    with node.client() as client:
        names = list(client.scan_iter(match=f"{STORAGE_PREFIX}*", count=1000))
        values = client.mget(names) if names else []
    return [n for n, v in zip(names, values, strict=True) if v and marker.encode() in v]


def assert_new_cache_entry_on(
    node: RedisNode, gateway: GatewayProcess, fake: FakeOpenAI, keys: Keys
) -> None:
    """A prompt never sent before misses, its entry (an answer nobody got before) is
    written to `node`, and the same prompt then hits: the cache reads and writes there.
    (Other entries may land there too: writes the gateway held during the failover.)"""
    marker = f"answer-{uuid.uuid4().hex}"
    fake.script(Behaviour(content=marker))  # the next upstream answer: this request's
    text = f"after the failover {uuid.uuid4().hex}"
    first = post(gateway, keys.cached["key"], text)
    assert (first.status_code, first.headers.get("x-gateway-cache")) == (200, "MISS")
    assert first.json()["choices"][0]["message"]["content"] == marker
    # The entry is written just after the answer (a batched background write).
    entries = wait_for(lambda: cache_entries_with(node, marker), f"the entry on {node.name}")
    assert len(entries) == 1, entries
    second = post(gateway, keys.cached["key"], text)
    assert (second.status_code, second.headers.get("x-gateway-cache")) == (200, "HIT")
    assert second.json()["choices"] == first.json()["choices"]


def key_id(gateway: GatewayProcess, name: str) -> str:
    listed = admin(gateway, "GET", "/admin/keys").json()["data"]
    return str(next(k["id"] for k in listed if k["name"] == name))


def assert_exact_rpm_on(node: RedisNode, gateway: GatewayProcess, limited: dict[str, Any]) -> None:
    """`RPM` requests of a fresh key are admitted and the next ones refused, and its
    sliding window holds exactly those on `node`."""
    statuses = [post(gateway, limited["key"], uuid.uuid4().hex).status_code for _ in range(RPM + 2)]
    assert statuses == [200] * RPM + [429] * 2
    with node.client() as client:
        assert client.zcard(f"gw:lim:{key_id(gateway, limited['name'])}:req") == RPM


def assert_outages_end(gateway: GatewayProcess) -> int:
    """Every outage the gateway logged was followed by its recovery; their number."""

    def balanced() -> str | None:
        log = gateway.log_text()
        return log if log.count(UNAVAILABLE) == log.count(RECOVERED) else None

    try:
        log = wait_for(balanced, "a recovery logged after each outage", 5)
    except AssertionError:
        lines = gateway.log_text().splitlines()
        raise AssertionError([line for line in lines if "redis" in line]) from None
    return int(log.count(UNAVAILABLE))


def fail_open_count(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    return parse(text).value("gateway_limits_fail_open_total")


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
        deployment.wait_demoted(old)
        demoted_at = time.monotonic()
        wait_for_recovery(traffic, demoted_at)
        traffic.stop()

        assert_served_per_the_rules(traffic)
        assert old.role() == "slave" and new.role() == "master"
        assert_new_cache_entry_on(new, gateway, fake_openai, keys)
        assert_exact_rpm_on(new, gateway, keys.rpm_after)
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
    assert errors_of("redis: {mode: cluster, url: 'redis://r'}")[0].startswith(
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
