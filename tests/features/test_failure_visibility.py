"""Operators can see and steer failures: each failed attempt logs a warning (rate-limited
per deployment, the upstream's message redacted), each cooldown its start and its end,
and a request's access line names its failed attempts; `cooldown_failures: 0` turns the
breaker off and `cooldown_on_retry_after: false` keeps a 429 from cooling a deployment."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, free_port
from tests.gatewayproc import GatewayProcess

ASK: Any = [{"role": "user", "content": "hi"}]


def config(fake: FakeOpenAI, **routing: Any) -> dict[str, Any]:
    def provider(url: str) -> dict[str, Any]:
        return {"kind": "openai", "base_url": url, "api_key": OPENAI_KEY}

    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "flaky": provider(f"{fake.base_url}/v1"),
            "dead": provider(f"http://127.0.0.1:{free_port()}/v1"),
            "backup": {"kind": "simulated"},
        },
        "routing": {"same_deployment_retries": 0, **routing},
        "models": [
            {"name": "f", "id": "flaky/m", "provider": "flaky", "model": "gpt-4o-mini"},
            {"name": "d", "id": "dead/m", "provider": "dead", "model": "gpt-4o-mini"},
            {"name": "b", "id": "sim/b", "provider": "backup", "model": "sim"},
        ],
        "routes": [
            {"name": "dead-first", "policy": "fallback", "models": ["dead/m", "sim/b"]},
            {"name": "flaky-first", "policy": "fallback", "models": ["flaky/m", "sim/b"]},
        ],
    }


def lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(x) for x in gateway.log_text().splitlines() if x.startswith("{")]


def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)


def test_failures_and_cooldowns_are_logged(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    gateway = start_gateway(config(fake_openai, cooldown_failures=3, cooldown_s=1))
    down = {"error": {"message": "down, key sk-proj-abcdef123456"}}
    fake_openai.script(*[Behaviour(status=503, body=down)] * 3)
    with client(gateway) as sdk:
        for _ in range(3):
            sdk.chat.completions.create(model="flaky-first", messages=ASK)
        time.sleep(1.5)  # the cooldown ends: the next request probes, and it succeeds
        sdk.chat.completions.create(model="flaky-first", messages=ASK)
    records = lines(gateway)
    failed = [r for r in records if "upstream attempt failed" in r.get("msg", "")]
    assert len(failed) == 1  # three failures within the interval: one line
    assert "deployment=flaky/m status=503" in failed[0]["msg"]
    assert "sk-proj" not in gateway.log_text() and "[redacted]" in failed[0]["msg"]
    assert any("flaky/m cooling down" in r.get("msg", "") for r in records)
    assert any("flaky/m recovered" in r.get("msg", "") for r in records)
    access = [r for r in records if r.get("event") == "access" and r["route"] == "flaky-first"]
    assert access[0]["failed_attempts"] == ["flaky/m: unavailable"]
    assert access[-1]["failed_attempts"] is None and access[-1]["deployment"] == "flaky/m"


def test_the_breaker_can_be_turned_off(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    gateway = start_gateway(config(fake_openai, cooldown_failures=0))
    with client(gateway) as sdk:
        for _ in range(4):  # every request tries the dead deployment first: never cooled
            raw = sdk.chat.completions.with_raw_response.create(model="dead-first", messages=ASK)
            assert raw.headers["x-gateway-attempts"] == "2"
    assert not any("cooling down" in r.get("msg", "") for r in lines(gateway))


@pytest.mark.parametrize("cools", [True, False])
def test_a_429_with_retry_after_cools_only_when_asked(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, cools: bool
) -> None:
    gateway = start_gateway(config(fake_openai, cooldown_on_retry_after=cools))
    fake_openai.script(Behaviour(status=429, headers={"retry-after": "30"}))
    with client(gateway) as sdk:
        sdk.chat.completions.create(model="flaky-first", messages=ASK)  # served by the backup
        raw = sdk.chat.completions.with_raw_response.create(model="flaky-first", messages=ASK)
    assert (raw.headers["x-gateway-deployment"] == "sim/b") is cools
