"""Traffic through a gateway while its Redis fails over (Sentinel or Cluster), and the
checks of the Redis-fault rules (rule 7) on what every request got: the cache and rate
limits fail open, budgets closed with a retryable 503, nothing else, none slow."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.cache.key import STORAGE_PREFIX
from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.governance import ADMIN_KEY, admin, bearer
from tests.gatewayproc import GatewayProcess
from tests.promtext import parse
from tests.sentinel import RedisNode, wait_for

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


def failover_config(
    fake: FakeOpenAI, redis: dict[str, Any], keys: list[dict[str, Any]]
) -> dict[str, Any]:
    """A gateway in front of the fake OpenAI, with the cache on, `keys`, and `redis`
    (the mode's own settings; the short timeouts added)."""
    return {
        "server": {"request_timeout_s": 10},
        "auth": {"mode": "keys", "keys": keys, "admin_keys": [ADMIN_KEY]},
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
        "redis": {**redis, **REDIS_TIMEOUTS},
    }


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
        assert client.zcard(f"gw:lim:{{{key_id(gateway, limited['name'])}}}:req") == RPM


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
