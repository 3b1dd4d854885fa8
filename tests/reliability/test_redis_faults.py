"""Redis faults under live traffic (rule 7): stopped, frozen, flushed, and replies lost.

Three gateway replicas share this module's private redis-server (never the session one:
these tests stop, freeze and flush it; each test leaves it running for the next).
Background threads keep requests flowing through every fault; each request is recorded
with its start time, duration and answer, and the assertions read those records: cache
and rate limits fail open within a short bound, budgets fail closed with a retryable 503,
everything recovers without a restart, spend is billed exactly once, and each outage is
logged once per transition and counted in /metrics.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.features.governance import (
    admin,
    bearer,
    chat,
    error_of,
    governance_config,
    in_parallel,
    usage_of,
)
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.openai_schema import validate
from tests.promtext import parse
from tests.reliability.helpers import TcpHop

# Short on purpose: a Redis call that is not answered within this must not hold requests.
REDIS_TIMEOUTS = {"socket_timeout_s": 0.2, "connect_timeout_s": 0.2, "operation_deadline_s": 0.25}
# Per request while Redis is away: a 0.25 s deadline or two (cache, limits) on a loaded
# 2-core box; never seconds, as redis-py's default retries would take.
FAULT_BOUND_S = 0.75
PACE_S = 0.02  # between one thread's requests: traffic, not a load test
SYNC_INTERVAL_S = 0.2  # limits.key_sync_interval_s in governance_config
PROPAGATION_BOUND_S = SYNC_INTERVAL_S + 0.6  # the interval plus a reload and a request
BIG_BUDGET_USD = 10_000.0  # never reached: a refusal can only be Redis' fault
UNAVAILABLE, RECOVERED = "redis unavailable", "redis available again"


def key(name: str) -> dict[str, Any]:
    return {"name": name, "key": f"gw-{name}-CANARY-{uuid.uuid5(uuid.NAMESPACE_DNS, name)}"}


def budgeted(name: str, usd: float) -> dict[str, Any]:
    return {**key(name), "budget_usd": usd, "budget_period": "total"}


def limited(name: str, rpm: int) -> dict[str, Any]:
    return {**key(name), "rpm": rpm}


# One set of keys per test, so the tests do not depend on each other's order.
KEYS = {
    k["name"]: k
    for k in [
        limited("freeze-open", 100_000),  # a rate limit that is checked, never reached
        budgeted("freeze-budget", BIG_BUDGET_USD),
        key("freeze-cache"),
        limited("freeze-rpm", 3),
        limited("stop-open", 100_000),
        budgeted("stop-budget", BIG_BUDGET_USD),
        key("stop-cache"),
        limited("stop-rpm", 5),
        budgeted("stop-budget-small", 3.5),  # three 1.00 USD requests fit, a fourth not
        limited("flush-open", 100_000),
        budgeted("flush-budget", BIG_BUDGET_USD),
        key("flush-cache"),
        limited("flush-rpm", 3),
    ]
}


def secret(name: str) -> str:
    return str(KEYS[name]["key"])


def replica_config(redis_url: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    config = governance_config(None, keys, window_s=30)
    # No deployment quotas: their background sync would blur the counts of Redis calls.
    config["models"] = [m for m in config["models"] if "rpm" not in m]
    config["routes"] = []
    config["redis"] = {"url": redis_url, **REDIS_TIMEOUTS}
    config["cache"] = {"enabled": True}
    return config


@pytest.fixture(scope="module")
def own_redis(session_dir: Path) -> Iterator[RedisServer]:
    """This module's Redis: stopping, freezing or flushing it disturbs no other module."""
    server = RedisServer(session_dir).start()
    yield server
    resume(server)
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    start_gateway: Callable[..., GatewayProcess], own_redis: RedisServer
) -> list[GatewayProcess]:
    config = replica_config(own_redis.url, list(KEYS.values()))
    return [start_gateway(config) for _ in range(3)]


@pytest.fixture(autouse=True)
def _redis_back(own_redis: RedisServer) -> Iterator[None]:
    """Whatever a test did to Redis, the next one finds it running and answering."""
    yield
    resume(own_redis)
    if own_redis.proc is None or own_redis.proc.poll() is not None:
        own_redis.start()


def resume(server: RedisServer) -> None:
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)


# --- traffic -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    started: float
    took_s: float
    status: int
    cache: str | None
    body: Any
    retry_after: str | None
    should_retry: str | None


class Traffic:
    """Threads sending chat requests in a loop until stopped; every answer is recorded."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, stream: str, gateway: GatewayProcess, api_key: str, cached: bool = False) -> None:
        self.samples[stream] = []
        thread = threading.Thread(
            target=self._loop, args=(stream, gateway, api_key, cached), daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _loop(self, stream: str, gateway: GatewayProcess, api_key: str, cached: bool) -> None:
        # One prompt for the cached stream (hits), a new one per request otherwise (misses).
        prompt = f"cache me {uuid.uuid4().hex}"
        with httpx.Client(base_url=gateway.base_url, headers=bearer(api_key), timeout=10) as c:
            while not self._stop.is_set():
                text = prompt if cached else f"fresh {uuid.uuid4().hex}"
                body = {
                    "model": "sim-chat",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": text}],
                }
                started = time.monotonic()
                response = c.post("/chat/completions", json=body)
                self.samples[stream].append(
                    Sample(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("x-gateway-cache"),
                        response.json(),
                        response.headers.get("retry-after"),
                        response.headers.get("x-should-retry"),
                    )
                )
                self._stop.wait(PACE_S)

    def since(self, stream: str, start: float, end: float = float("inf")) -> list[Sample]:
        """Samples that started at or after `start` and finished before `end`."""
        return [
            s for s in self.samples[stream] if start <= s.started and s.started + s.took_s < end
        ]

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < deadline, f"traffic: timed out waiting for {what}: {self}"
            time.sleep(0.02)

    def every(self, streams: list[str], start: float, ok: Callable[[Sample], bool], n: int) -> bool:
        return all(sum(map(ok, self.since(s, start))) >= n for s in streams)

    def __str__(self) -> str:
        """Per stream: (status, cache) -> count, and the last body (for failure messages)."""
        summary = {}
        for stream, samples in self.samples.items():
            counts: dict[tuple[int, str | None], int] = {}
            for s in samples:
                counts[s.status, s.cache] = counts.get((s.status, s.cache), 0) + 1
            summary[stream] = (counts, samples[-1].body if samples else None)
        return repr(summary)[:3000]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_traffic(replicas: list[GatewayProcess], prefix: str) -> Traffic:
    """On every replica an unlimited-looking key and a budgeted one; one cached stream."""
    traffic = Traffic()
    for i, gateway in enumerate(replicas):
        traffic.add(f"open{i}", gateway, secret(f"{prefix}-open"))
        traffic.add(f"budget{i}", gateway, secret(f"{prefix}-budget"))
    traffic.add("cached", replicas[0], secret(f"{prefix}-cache"), cached=True)
    return traffic


def any_sample(_: Sample) -> bool:
    return True


def served(s: Sample) -> bool:
    return s.status == 200


def hit(s: Sample) -> bool:
    return s.status == 200 and s.cache == "HIT"


# --- observations ----------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def refused_unavailable(text: str) -> float:
    """Requests refused with limits_unavailable, over every key."""
    return parse(text).value("gateway_rejections_total", reason="limits_unavailable")


def metrics_of(gateway: GatewayProcess) -> str:
    return httpx.get(f"{gateway.url}/metrics", timeout=5).text


REDIS_LIMIT_ERRORS = 'gateway_redis_errors_total{operation="limits"}'
FAIL_OPEN = "gateway_limits_fail_open_total"


def key_id(gateway: GatewayProcess, name: str) -> str:
    listed = admin(gateway, "GET", "/admin/keys").json()["data"]
    return str(next(k["id"] for k in listed if k["name"] == name))


def budget_hash(url: str, gateway: GatewayProcess, name: str) -> tuple[float, float, int]:
    """(spent, reserved, open reservations) of a key's all-time budget, read from Redis."""
    base = f"gw:lim:{{{key_id(gateway, name)}}}:b:total"
    with redis.Redis.from_url(url) as client:
        spent, reserved = client.hmget(base, "spent", "reserved")
        return float(spent or 0), float(reserved or 0), int(client.hlen(f"{base}:resv"))


def settled_budget(url: str, gateway: GatewayProcess, name: str, spent: float) -> tuple[float, int]:
    """(reserved, open reservations) once `spent` is recorded and nothing is held any more."""
    deadline = time.monotonic() + 5
    while True:
        now_spent, reserved, holding = budget_hash(url, gateway, name)
        if (now_spent >= spent and holding == 0) or time.monotonic() > deadline:
            assert now_spent == pytest.approx(spent, abs=1e-6)
            return reserved, holding
        time.sleep(0.05)


def log_since(gateway: GatewayProcess, mark: int) -> str:
    return gateway.log_text()[mark:]


def assert_one_transition_each_way(replicas: list[GatewayProcess], marks: list[int]) -> None:
    """Each replica logs the outage once and the recovery once, whatever the traffic."""
    for gateway, mark in zip(replicas, marks, strict=True):
        deadline = time.monotonic() + 5
        while RECOVERED not in log_since(gateway, mark) and time.monotonic() < deadline:
            time.sleep(0.05)  # an idle replica notices at its next background sync
        log = log_since(gateway, mark)
        assert (log.count(UNAVAILABLE), log.count(RECOVERED)) == (1, 1), [
            line for line in log.splitlines() if "gateway.access" not in line
        ]


def assert_retryable_unavailable(sample: Sample) -> None:
    assert sample.status == 503, sample
    validate(sample.body, "ErrorResponse")
    assert set(sample.body["error"]) == {"message", "type", "param", "code"}
    assert sample.body["error"]["code"] == "limits_unavailable"
    assert sample.retry_after is not None and int(sample.retry_after) >= 1
    assert sample.should_retry != "false"  # the SDK retries a 503 unless told not to


def assert_outage_served(traffic: Traffic, start: float, end: float) -> None:
    """During the outage: open keys and the cache served fast, budgets refused fast."""
    for stream, samples in traffic.samples.items():
        slow = [round(s.took_s, 3) for s in samples if s.took_s >= FAULT_BOUND_S]
        assert not slow, f"{stream}: requests took {slow} s while Redis was away"
        outage = traffic.since(stream, start, end)
        assert outage, f"{stream}: no request during the outage"
        if stream.startswith("budget"):
            for sample in outage:
                assert_retryable_unavailable(sample)
        else:
            assert [s.status for s in outage] == [200] * len(outage), outage[:3]
    cached = traffic.since("cached", start, end)
    assert "MISS" in {s.cache for s in cached}  # served from upstream, not failed


def run_outage(
    replicas: list[GatewayProcess],
    prefix: str,
    fault: Callable[[], None],
    heal: Callable[[], None],
) -> tuple[Traffic, float, float]:
    """Traffic through `fault` until every stream saw the outage, then through `heal` until
    every replica serves the budgeted key again and the cache hits again."""
    traffic = start_traffic(replicas, prefix)
    budgets = [f"budget{i}" for i in range(len(replicas))]
    try:
        traffic.wait_until(lambda: traffic.every(budgets, 0, served, 2), "warm-up")
        traffic.wait_until(lambda: traffic.every(["cached"], 0, hit, 1), "a cache hit")
        try:
            fault()
            fault_at = time.monotonic()  # Redis is gone or frozen from here on
            # Past the first timeouts, every stream still flows: three answers each.
            settled = fault_at + 2 * REDIS_TIMEOUTS["operation_deadline_s"]
            streams = list(traffic.samples)
            traffic.wait_until(lambda: traffic.every(streams, settled, any_sample, 3), "outage")
        finally:
            healed_at = time.monotonic()  # and until here
            heal()
        traffic.wait_until(lambda: traffic.every(budgets, healed_at, served, 1), "budgets back")
        traffic.wait_until(lambda: traffic.every(["cached"], healed_at, hit, 1), "cache back")
    finally:
        traffic.stop()
    return traffic, fault_at, healed_at


def fresh_chat(gateway: GatewayProcess, key_name: str) -> httpx.Response:
    """A prompt nobody sent before: a cache hit would cost nothing and prove nothing."""
    return chat(gateway, secret(key_name), messages=[{"role": "user", "content": uuid.uuid4().hex}])


def across(replicas: list[GatewayProcess], key_name: str, n: int) -> list[int]:
    """Statuses of `n` concurrent fresh requests spread over the replicas, sorted."""
    targets = [replicas[i % len(replicas)] for i in range(n)]
    calls = (lambda g=g: fresh_chat(g, key_name) for g in targets)
    return sorted(r.status_code for r in in_parallel(calls))


def served_count(traffic: Traffic, prefix: str) -> int:
    return sum(
        served(s) for name, ss in traffic.samples.items() if name.startswith(prefix) for s in ss
    )


# --- tests -----------------------------------------------------------------------------


def test_frozen_redis_fails_open_fast_closes_budgets_and_bills_exactly(
    replicas: list[GatewayProcess], own_redis: RedisServer
) -> None:
    assert own_redis.proc is not None
    proc = own_redis.proc
    marks = [len(g.log_text()) for g in replicas]
    before = [metrics_of(g) for g in replicas]

    traffic, fault_at, healed_at = run_outage(
        replicas,
        "freeze",
        lambda: proc.send_signal(signal.SIGSTOP),  # alive but silent: every call times out
        lambda: proc.send_signal(signal.SIGCONT),
    )

    assert_outage_served(traffic, fault_at, healed_at)
    assert_one_transition_each_way(replicas, marks)
    for i, gateway in enumerate(replicas):
        after, was = metrics_of(gateway), before[i]
        refused = sum(s.status == 503 for s in traffic.samples[f"budget{i}"])
        assert refused_unavailable(after) - refused_unavailable(was) == refused
        assert metric(after, REDIS_LIMIT_ERRORS) - metric(was, REDIS_LIMIT_ERRORS) >= refused
        assert metric(after, FAIL_OPEN) > metric(was, FAIL_OPEN)

    # Admissions that timed out were applied once Redis woke up; each one is settled or
    # released exactly once: every served request billed once, nothing left held.
    open_served = served_count(traffic, "open")
    line = usage_of(replicas[0], "freeze-open", open_served)
    assert (line["requests"], line["cost_usd"]) == (open_served, pytest.approx(open_served))
    budget_served = served_count(traffic, "budget")
    assert settled_budget(own_redis.url, replicas[1], "freeze-budget", budget_served) == (0, 0)
    cached = traffic.samples["cached"]
    line = usage_of(replicas[0], "freeze-cache", len(cached))
    misses = sum(s.cache == "MISS" for s in cached)
    assert (line["requests"], line["cost_usd"]) == (len(cached), pytest.approx(misses))

    # Limits enforce again: exactly the rpm across the replicas.
    assert across(replicas, "freeze-rpm", 9) == [200] * 3 + [429] * 6


def test_stopped_redis_restarted_on_the_same_port(
    replicas: list[GatewayProcess], own_redis: RedisServer
) -> None:
    marks = [len(g.log_text()) for g in replicas]
    before = [metrics_of(g) for g in replicas]
    port = own_redis.port

    traffic, fault_at, healed_at = run_outage(
        replicas, "stop", own_redis.stop, lambda: own_redis.start()
    )

    assert own_redis.port == port  # the gateways reconnect to the same address
    assert_outage_served(traffic, fault_at, healed_at)
    assert_one_transition_each_way(replicas, marks)
    for gateway, was in zip(replicas, before, strict=True):
        assert metric(metrics_of(gateway), REDIS_LIMIT_ERRORS) > metric(was, REDIS_LIMIT_ERRORS)
    # The new Redis starts empty (no scripts, no counters): the first misses came from it.
    cached = traffic.since("cached", healed_at)
    assert {s.cache for s in cached} == {"MISS", "HIT"}

    # Scripts are loaded again on every replica: limits and budgets are exact again.
    assert across(replicas, "stop-rpm", 15) == [200] * 5 + [429] * 10
    assert across(replicas, "stop-budget-small", 12) == [200] * 3 + [429] * 9
    refused = fresh_chat(replicas[2], "stop-budget-small")
    assert error_of(refused)["code"] == "insufficient_quota"


def test_flushall_during_traffic_is_not_an_outage(
    replicas: list[GatewayProcess], own_redis: RedisServer
) -> None:
    marks = [len(g.log_text()) for g in replicas]
    before = [metric(metrics_of(g), REDIS_LIMIT_ERRORS) for g in replicas]
    assert [fresh_chat(g, "flush-rpm").status_code for g in replicas] == [200] * 3
    assert fresh_chat(replicas[0], "flush-rpm").status_code == 429

    traffic = start_traffic(replicas, "flush")
    streams = list(traffic.samples)
    with traffic:
        traffic.wait_until(lambda: traffic.every(["cached"], 0, hit, 1), "a cache hit")
        flushed_at = time.monotonic()
        with redis.Redis.from_url(own_redis.url) as client:
            client.flushall()
        traffic.wait_until(lambda: traffic.every(streams, flushed_at, any_sample, 3), "traffic")
        traffic.wait_until(lambda: traffic.every(["cached"], flushed_at, hit, 1), "cache refill")

    for stream, samples in traffic.samples.items():
        assert {s.status for s in samples} == {200}, (stream, samples[:3])
        assert max(s.took_s for s in samples) < FAULT_BOUND_S
    # The entry went with the flush: a request still running then, or a later one, missed.
    after = [s.cache for s in traffic.samples["cached"] if s.started + s.took_s >= flushed_at]
    assert "MISS" in after
    for gateway, mark, errors in zip(replicas, marks, before, strict=True):
        log = log_since(gateway, mark)
        assert UNAVAILABLE not in log and "limit write failed" not in log
        assert metric(metrics_of(gateway), REDIS_LIMIT_ERRORS) == errors
    # The flush took the rate counters with it; the limit holds again from zero.
    assert across(replicas, "flush-rpm", 6) == [200] * 3 + [429] * 3


# --- lost replies: a write that timed out but was applied --------------------------------


class ReplyLossProxy(TcpHop):
    """A TCP hop to Redis that, when armed, loses the replies to script calls.

    Every command still reaches Redis and runs; only on a connection that carried an
    EVALSHA while armed, Redis' answers are dropped. `disarm` resets those connections,
    as a network that lost replies does in the end: a pipelined client must not read a
    later reply as the answer to the lost one. The gateway sees a timeout for a
    write that was applied: the ambiguous case of rule 7 (a SIGSTOP cannot produce it for
    settlements: redis-py asks SCRIPT EXISTS first, so a frozen Redis gets no EVALSHA)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.armed = threading.Event()
        self._lossy: list[asyncio.StreamWriter] = []

    def disarm(self) -> None:
        self.armed.clear()
        asyncio.run_coroutine_threadsafe(self._reset_lossy(), self._loop).result(5)

    async def _reset_lossy(self) -> None:
        for writer in self._lossy:
            writer.transport.abort()
        self._lossy.clear()

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        lossy = False

        async def commands() -> None:
            nonlocal lossy
            with suppress(OSError):
                while data := await client_r.read(65536):
                    if not lossy and self.armed.is_set() and b"EVALSHA" in data:
                        lossy = True
                        self._lossy.append(client_w)
                    redis_w.write(data)
                    await redis_w.drain()

        async def replies() -> None:
            with suppress(OSError):
                while data := await redis_r.read(65536):
                    if not lossy:
                        client_w.write(data)
                        await client_w.drain()

        pumps = [asyncio.create_task(commands()), asyncio.create_task(replies())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for writer in (client_w, redis_w):
                writer.close()


@pytest.fixture
def lossy_gateway(
    start_gateway: Callable[..., GatewayProcess], own_redis: RedisServer
) -> Iterator[tuple[GatewayProcess, ReplyLossProxy]]:
    proxy = ReplyLossProxy(own_redis.port).start()
    config = replica_config(f"redis://127.0.0.1:{proxy.port}/0", [budgeted("lossy", 100.0)])
    # A slow answer leaves time to arm the proxy between admission and settlement.
    config["providers"]["slow"] = {
        "kind": "simulated",
        "simulation": {"output_tokens": 10, "ttft_s": 1.0},
    }
    config["models"].append({**config["models"][0], "name": "sim-slow", "provider": "slow"})
    config["cache"] = {"enabled": False}
    yield start_gateway(config), proxy
    proxy.stop()


def evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_settlement_applied_but_unanswered_is_billed_once(
    lossy_gateway: tuple[GatewayProcess, ReplyLossProxy], own_redis: RedisServer
) -> None:
    gateway, proxy = lossy_gateway
    api_key = budgeted("lossy", 100.0)["key"]
    assert chat(gateway, api_key).status_code == 200
    assert usage_of(gateway, "lossy", 1)["requests"] == 1
    errors = metric(metrics_of(gateway), REDIS_LIMIT_ERRORS)

    slow: list[httpx.Response] = []
    request = threading.Thread(target=lambda: slow.append(chat(gateway, api_key, model="sim-slow")))
    request.start()
    reservations = f"gw:lim:{{{key_id(gateway, 'lossy')}}}:b:total:resv"
    with redis.Redis.from_url(own_redis.url) as client:
        while not client.hlen(reservations):  # wait for the admission: then arm
            assert request.is_alive(), slow[0].text  # ttft 1 s: still upstream
            time.sleep(0.01)
    armed_at = evalsha_calls(own_redis.url)
    proxy.armed.set()
    try:
        request.join(10)
        assert slow[0].status_code == 200, slow[0].text
        # The settlement ran in Redis, its answer was lost, the gateway wrote it again: at
        # least two runs of the same settlement reached Redis.
        deadline = time.monotonic() + 5
        while evalsha_calls(own_redis.url) < armed_at + 2:
            assert time.monotonic() < deadline, "the settlement was not retried"
            time.sleep(0.05)
    finally:
        proxy.disarm()
    assert metric(metrics_of(gateway), REDIS_LIMIT_ERRORS) > errors

    assert chat(gateway, api_key).status_code == 200  # written after the retried settlement
    line = usage_of(gateway, "lossy", 3)
    assert (line["requests"], line["cost_usd"]) == (3, pytest.approx(3.0))
    assert settled_budget(own_redis.url, gateway, "lossy", 3.0) == (0, 0)


# --- revocation under concurrent traffic ------------------------------------------------


def test_revoked_key_is_refused_everywhere_under_traffic(replicas: list[GatewayProcess]) -> None:
    created = admin(replicas[0], "POST", "/admin/keys", json={"name": "busy-revoked"})
    assert created.status_code == 201, created.text
    secret_key, key_ref = created.json()["key"], created.json()["id"]
    deadline = time.monotonic() + PROPAGATION_BOUND_S
    while any(chat(g, secret_key).status_code != 200 for g in replicas):
        assert time.monotonic() < deadline, "the new key did not reach every replica"
        time.sleep(0.02)
    traffic = Traffic()
    with traffic:
        for i, gateway in enumerate(replicas):
            for j in range(2):
                traffic.add(f"r{i}.{j}", gateway, secret_key)
        streams = list(traffic.samples)
        traffic.wait_until(lambda: traffic.every(streams, 0, served, 2), "the key everywhere")
        revoked = admin(replicas[1], "POST", f"/admin/keys/{key_ref}/revoke")
        revoked_at = time.monotonic()
        assert revoked.status_code == 200, revoked.text
        refused_everywhere = revoked_at + PROPAGATION_BOUND_S
        traffic.wait_until(
            lambda: traffic.every(streams, refused_everywhere, any_sample, 3), "later requests"
        )

    for stream, samples in traffic.samples.items():
        statuses = [s.status for s in samples]
        assert 401 in statuses, (stream, statuses)
        first_refusal = statuses.index(401)
        # Refused for good from the first refusal on, and by the bound on every replica.
        assert set(statuses[:first_refusal]) == {200}
        assert set(statuses[first_refusal:]) == {401}, (stream, statuses)
        assert samples[first_refusal].started < refused_everywhere, stream
        assert samples[first_refusal].body["error"]["code"] == "invalid_api_key"
        if stream.startswith("r1."):  # the revoking replica: at once
            assert all(s.status == 401 for s in traffic.since(stream, revoked_at))
