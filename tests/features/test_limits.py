"""Rate limits and budgets, enforced exactly across three gateway replicas on one Redis,
as the official SDK experiences them, and what happens while Redis is down."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.features.governance import (
    ASK,
    COST_PER_REQUEST_USD,
    bearer,
    chat,
    error_of,
    governance_config,
    in_parallel,
    usage_of,
)
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.redis_cluster import backend_of

RPM_KEY = "gw-rpm-five-CANARY-11aa"
BUDGET_KEY = "gw-budget-key-CANARY-22bb"
QUOTA_KEY = "gw-no-limits-CANARY-88bb"
RPM_LIMIT = 5
BUDGET_USD = 3.5  # three 1.00 USD requests fit, a fourth would pass it


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def replicas(
    request: pytest.FixtureRequest, start_gateway: Callable[..., GatewayProcess]
) -> list[GatewayProcess]:
    """Three replicas on one Redis, then on a Redis Cluster."""
    keys = [
        {"name": "rpm-five", "key": RPM_KEY, "team": "red", "rpm": RPM_LIMIT},
        {"name": "budget-key", "key": BUDGET_KEY, "budget_usd": BUDGET_USD, "budget_period": "day"},
        {"name": "no-limits", "key": QUOTA_KEY},
    ]
    config = governance_config(backend_of(request), keys, window_s=30)
    # The first replica runs two worker processes: limits hold across workers as across
    # replicas (one Redis).
    return [start_gateway(config, workers=2 if i == 0 else 1) for i in range(3)]


def test_rpm_admits_exactly_the_limit_across_replicas(replicas: list[GatewayProcess]) -> None:
    responses = in_parallel(
        (lambda g=replicas[i % 3]: chat(g, RPM_KEY)) for i in range(3 * RPM_LIMIT)
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: RPM_LIMIT, 429: 2 * RPM_LIMIT}, [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 429):
        assert error_of(refused)["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert 0 < int(refused.headers["retry-after-ms"]) <= 30_000
    assert usage_of(replicas[0], "rpm-five", RPM_LIMIT)["requests"] == RPM_LIMIT


def test_budget_is_never_passed_under_concurrency(replicas: list[GatewayProcess]) -> None:
    def call(i: int) -> httpx.Response:
        # Every other request streams: its cost is settled when the stream ends.
        return chat(replicas[i % 3], BUDGET_KEY, stream=bool(i % 2))

    responses = in_parallel((lambda i=i: call(i)) for i in range(12))
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(served) == 3  # 3 x 1.00 fits in 3.50, a fourth would not
    for response in refused:
        assert response.status_code == 429, response.text
        assert error_of(response)["code"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
    line = usage_of(replicas[1], "budget-key", 3)
    assert line["requests"] == 3
    assert line["cost_usd"] == pytest.approx(3 * COST_PER_REQUEST_USD)
    assert line["cost_usd"] <= BUDGET_USD + COST_PER_REQUEST_USD
    assert chat(replicas[2], BUDGET_KEY).status_code == 429  # settled: still exhausted


def test_a_limitless_key_is_billed_exactly_in_tallies(replicas: list[GatewayProcess]) -> None:
    """Requests that reserve nothing are written per key, route and day, not one by one
    (gateway.limits.sync): across replicas the report still counts every one."""
    requests = 60
    responses = in_parallel((lambda g=replicas[i % 3]: chat(g, QUOTA_KEY)) for i in range(requests))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    line = usage_of(replicas[1], "no-limits", requests)
    assert line["requests"] == requests
    assert line["output_tokens"] == 10 * requests
    assert line["input_tokens"] > 0 and line["input_tokens"] % requests == 0
    assert line["cost_usd"] == pytest.approx(requests * COST_PER_REQUEST_USD)


def test_deployment_at_its_rpm_is_skipped_not_failed(replicas: list[GatewayProcess]) -> None:
    # Single-process replicas: a deployment's use reaches other processes (another
    # replica, or another worker of the same) with the next sync, 0.1 s later.
    first, second = replicas[1], replicas[2]

    def via(gateway: GatewayProcess) -> str:
        response = httpx.post(
            f"{gateway.base_url}/chat/completions",
            json={"model": "quota-route", "messages": ASK},
            headers=bearer(QUOTA_KEY),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.headers["x-gateway-deployment"]

    assert [via(first), via(first)] == ["sim/quota-a", "sim/quota-a"]
    assert via(first) == "sim/quota-b"  # quota-a has used its 2 requests this window
    time.sleep(0.4)  # a few deployment syncs (every 0.1 s)
    assert via(second) == "sim/quota-b"  # the other replica knows it too


@pytest.fixture(scope="module")
def sdk_gateway(
    start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer
) -> GatewayProcess:
    keys = [
        {"name": "sdk-rpm-one", "key": "gw-sdk-rpm-CANARY-33cc", "rpm": 1},
        {"name": "sdk-budget", "key": "gw-sdk-budget-CANARY-44dd", "budget_usd": 1.5},
        {"name": "embed-rpm-one", "key": "gw-embed-rpm-CANARY-55ee", "rpm": 1},
    ]
    return start_gateway(governance_config(redis_server.url, keys, window_s=1))


def statuses_of(gateway: GatewayProcess, key_name: str, at_least: int) -> list[int]:
    """Statuses of the key's requests in the access log (lines land just after responses)."""
    pattern = re.compile(r'"status":(\d+).*"key":"' + re.escape(key_name) + '"')
    deadline = time.monotonic() + 3
    while True:
        found = [int(m.group(1)) for m in pattern.finditer(gateway.log_text())]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_sdk_retries_a_rate_limited_request_after_retry_after(sdk_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        base_url=sdk_gateway.base_url, api_key="gw-sdk-rpm-CANARY-33cc", max_retries=2
    )
    with client:
        started = time.monotonic()
        client.chat.completions.create(model="sim-chat", messages=ASK)
        reply = client.chat.completions.create(model="sim-chat", messages=ASK)
        took_s = time.monotonic() - started
    assert reply.choices[0].message.content
    # Refused once, then retried after retry-after, when the 1 s window had moved on.
    assert statuses_of(sdk_gateway, "sdk-rpm-one", 3) == [200, 429, 200]
    assert 0.95 <= took_s < 4


def test_sdk_does_not_retry_an_exhausted_budget(sdk_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        base_url=sdk_gateway.base_url, api_key="gw-sdk-budget-CANARY-44dd", max_retries=2
    )
    with client:
        client.chat.completions.create(model="sim-chat", messages=ASK, max_tokens=10)
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model="sim-chat", messages=ASK, max_tokens=10)
    assert raised.value.code == "insufficient_quota"
    # Exactly one refused request reached the gateway: the SDK did not retry it.
    assert statuses_of(sdk_gateway, "sdk-budget", 2) == [200, 429]


def test_embeddings_count_against_the_key(sdk_gateway: GatewayProcess) -> None:
    def embed() -> httpx.Response:
        return httpx.post(
            f"{sdk_gateway.base_url}/embeddings",
            json={"model": "sim-embed", "input": "count me"},
            headers=bearer("gw-embed-rpm-CANARY-55ee"),
            timeout=10,
        )

    assert embed().status_code == 200
    refused = embed()
    assert refused.status_code == 429 and error_of(refused)["code"] == "rate_limit_exceeded"


@pytest.fixture
def own_redis(session_dir: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: stopping it must not disturb the other tests."""
    server = RedisServer(session_dir).start()
    yield server
    server.stop()


def test_redis_down_rate_limits_fail_open_budgets_fail_closed(
    start_gateway: Callable[..., GatewayProcess], own_redis: RedisServer
) -> None:
    keys = [
        {"name": "rate-only", "key": "gw-rate-only-CANARY-66ff", "rpm": 100},
        {"name": "budgeted", "key": "gw-budgeted-CANARY-77aa", "budget_usd": 100},
    ]
    gateway = start_gateway(governance_config(own_redis.url, keys))
    rate_only, budgeted = "gw-rate-only-CANARY-66ff", "gw-budgeted-CANARY-77aa"
    assert chat(gateway, rate_only).status_code == 200
    assert chat(gateway, budgeted).status_code == 200

    own_redis.stop()
    for _ in range(3):
        assert chat(gateway, rate_only).status_code == 200  # fail open
        refused = chat(gateway, budgeted)  # fail closed, retryable later, never a 429
        assert refused.status_code == 503
        assert error_of(refused)["code"] == "limits_unavailable"
        assert refused.headers["retry-after"] == "2"
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert re.search(r"gateway_limits_fail_open_total ([3-9]|\d\d)", metrics), metrics
    refused = 'gateway_rejections_total{key="budgeted",reason="limits_unavailable"} 3.0'
    assert refused in metrics, metrics

    own_redis.start()
    deadline = time.monotonic() + 5
    while chat(gateway, budgeted).status_code != 200:
        assert time.monotonic() < deadline, "budgeted key not served after Redis came back"
        time.sleep(0.1)
    log = gateway.log_text()
    assert log.count("redis unavailable") == 1  # one warning per outage, not per request
    assert "redis available again" in log


def test_without_redis_the_same_rules_hold_in_process(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    keys = [
        {"name": "local-rpm", "key": "gw-local-rpm-CANARY-99dd", "rpm": 2},
        {"name": "local-budget", "key": "gw-local-budget-CANARY-aa22", "budget_usd": 1.5},
    ]
    gateway = start_gateway(governance_config(None, keys))
    rpm = [chat(gateway, "gw-local-rpm-CANARY-99dd").status_code for _ in range(3)]
    assert rpm == [200, 200, 429]
    budget = [chat(gateway, "gw-local-budget-CANARY-aa22") for _ in range(2)]
    assert [r.status_code for r in budget] == [200, 429]
    assert error_of(budget[1])["code"] == "insufficient_quota"
    assert usage_of(gateway, "local-budget", 1)["cost_usd"] == pytest.approx(1.0)
