"""A Redis that is configured but never reachable logs one line, not a flood, through
real gateway processes: an unknown host and a closed port, idle and under traffic.
When Redis does come up, one line says so; an empty `redis.url` means no Redis at all.

(Before: an idle process's routing-stats sync sent an empty pipeline, which succeeds
without touching Redis, and every such success logged "redis available again", then the
next read "redis unavailable" again, every `routing.stats_sync_interval_s`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import free_port
from tests.gatewayproc import GatewayProcess, RedisServer

UNAVAILABLE, RECOVERED = "redis unavailable", "redis available again"
SYNC_S = 0.1  # every background sync this often: a flood would show within a second
TIMEOUTS = {"connect_timeout_s": 0.2, "socket_timeout_s": 0.2, "operation_deadline_s": 0.25}


def config(fake: FakeOpenAI, redis: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "redis": redis,
        "cache": {"enabled": True},
        "routing": {"stats_sync_interval_s": SYNC_S},
        "limits": {"key_sync_interval_s": SYNC_S, "deployment_sync_interval_s": SYNC_S},
        "providers": {
            "fake": {"kind": "openai", "base_url": f"{fake.base_url}/v1", "api_key": OPENAI_KEY}
        },
        "models": [{"name": "m", "provider": "fake", "model": "gpt-4o-mini"}],
    }


def idle_then_busy(gateway: GatewayProcess, seconds: float) -> list[int]:
    """`seconds` of idling, then as long of requests (chat, readiness): their statuses."""
    time.sleep(seconds)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": f"hi {len(statuses)}"}]
        )
        statuses.append(answer.status_code)
        time.sleep(0.05)
    return statuses


def readiness(gateway: GatewayProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/readyz", timeout=5)
    return response.status_code, response.json()


def counts(gateway: GatewayProcess) -> tuple[int, int]:
    log = gateway.log_text()
    return log.count(UNAVAILABLE), log.count(RECOVERED)


@pytest.mark.parametrize("url", ["redis://no-such-host.invalid:6379/0", "closed-port"])
def test_unreachable_redis_logs_one_line_and_serves(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, url: str
) -> None:
    if url == "closed-port":
        url = f"redis://127.0.0.1:{free_port()}/0"
    gateway = start_gateway(config(fake_openai, {"url": url, **TIMEOUTS}))
    statuses = idle_then_busy(gateway, 1.0)
    assert statuses and set(statuses) == {200}  # cache and limits fail open
    status, body = readiness(gateway)
    # Configured but unreachable: degraded, still ready (it serves: README, "Endpoints").
    assert (status, body) == (
        200,
        {"status": "degraded", "checks": {"config": "ok", "redis": "unreachable"}},
    )
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert counts(gateway) == (1, 0)


def test_redis_that_comes_up_later_is_logged_once(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)  # its port chosen, nothing listening there yet
    gateway = start_gateway(config(fake_openai, {"url": redis.url, **TIMEOUTS}))
    try:
        time.sleep(1.0)
        assert counts(gateway) == (1, 0)
        redis.start()
        deadline = time.monotonic() + 10
        while readiness(gateway)[1]["status"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert readiness(gateway) == (
            200,
            {"status": "ready", "checks": {"config": "ok", "redis": "ok"}},
        )
        assert set(idle_then_busy(gateway, 1.0)) == {200}
        assert counts(gateway) == (1, 1)
    finally:
        redis.stop()


def test_an_empty_redis_url_means_no_redis(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    """`url: ${REDIS_URL:-}` with REDIS_URL unset: memory stores, ready, nothing said."""
    gateway = start_gateway(config(fake_openai, {"url": "", **TIMEOUTS}))
    assert set(idle_then_busy(gateway, 0.5)) == {200}
    assert readiness(gateway) == (200, {"status": "ready", "checks": {"config": "ok"}})
    assert "redis" not in gateway.log_text().lower()
