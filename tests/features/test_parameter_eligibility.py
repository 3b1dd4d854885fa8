"""Parameters a provider kind cannot honour are capabilities: a deployment that cannot
serve `n: 2` or `logprobs` is skipped (reason `unsupported_parameter`, shown by
/v1/route/explain) and the next candidate serves; only when no candidate can, a 400 names
the parameter. A prompt too long for every candidate is a 400 `context_length_exceeded`,
not a retryable 503."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ASK: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> GatewayProcess:
    config: dict[str, Any] = {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                       "api_key": ANTHROPIC_KEY},
            "oai": {"kind": "openai", "base_url": f"{fake_openai.base_url}/v1",
                    "api_key": OPENAI_KEY},
        },
        "models": [
            # The Claude deployment is the cheaper one: `cheapest` ranks it first.
            {"name": "cheap", "id": "claude/c", "provider": "claude", "model": "claude-x",
             "input_price_per_mtok_usd": 0.01, "output_price_per_mtok_usd": 0.02,
             "context_window_tokens": 1000},
            {"name": "dear", "id": "oai/o", "provider": "oai", "model": "gpt-4o-mini",
             "input_price_per_mtok_usd": 5, "output_price_per_mtok_usd": 10,
             "context_window_tokens": 2000},
        ],
        "routes": [
            {"name": "auto", "policy": "cheapest", "models": ["claude/c", "oai/o"]},
            {"name": "claude-only", "policy": "fallback", "models": ["claude/c"]},
        ],
    }  # fmt: skip
    return start_gateway(config)


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)


@pytest.mark.parametrize(
    ("params", "param"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"seed": 7}, "seed")],
)
def test_a_parameter_claude_cannot_honour_goes_to_the_next_candidate(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    fake_anthropic: FakeAnthropic,
    params: dict[str, Any],
    param: str,
) -> None:
    answer = client.chat.completions.with_raw_response.create(model="auto", messages=ASK, **params)
    assert answer.headers["x-gateway-deployment"] == "oai/o"
    assert fake_anthropic.calls == 0
    body = {"model": "auto", "messages": ASK, **params}
    plan = httpx.post(f"{gateway.base_url}/route/explain", json=body, headers=AUTH).json()
    [rejected] = plan["rejected"]
    assert rejected["deployment_id"] == "claude/c"
    assert rejected["reason"] == "unsupported_parameter" and param in rejected["detail"]


def test_without_a_candidate_for_the_parameter_a_400_names_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-only", messages=ASK, logprobs=True)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "logprobs" and error["code"] == "unsupported_parameter"


def test_a_plain_request_still_goes_to_the_cheaper_claude(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    answer = client.chat.completions.with_raw_response.create(model="auto", messages=ASK)
    assert answer.headers["x-gateway-deployment"] == "claude/c"
    assert fake_anthropic.calls == 1


def test_a_prompt_too_long_for_every_window_is_a_400_context_length_exceeded(
    client: openai.OpenAI,
) -> None:
    long: Any = [{"role": "user", "content": "word " * 20_000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=long)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "window" in error["message"]


def test_max_tokens_beyond_every_window_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=ASK, max_tokens=1_000_000_000)
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert error["param"] == "max_tokens"
