"""The Azure OpenAI adapter end to end: the official openai SDK -> the real gateway -> a fake
Azure resource (deployment routes, api-version, api-key) and back.

Every test ends by checking that the fake recorded no violation: the gateway sent the
key as `api-key` (never `Authorization`), a supported api-version, and an existing
deployment in the path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.conftest import AZURE_KEY, GATEWAY_KEY
from tests.fakes.azure_fake import FakeAzure
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate

IN_USD, OUT_USD = 2.5, 10.0


def e2e_config(fake: FakeAzure) -> dict[str, Any]:
    provider = {
        "kind": "azure",
        "base_url": fake.base_url,
        "api_key": AZURE_KEY,
        "timeouts": {"connect_s": 1.0, "read_s": 2.0},
    }
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "routing": {"cooldown_failures": 1000, "same_deployment_retries": 0},
        "providers": {
            "az": provider,
            "az-v1": {**provider, "api_version": "v1"},
            "az-preview": {**provider, "api_version": "2025-04-01-preview"},
        },
        "models": [
            {
                "name": "gpt-4o",
                "provider": "az",
                "model": "chat-prod",  # the Azure deployment name
                "input_price_per_mtok_usd": IN_USD,
                "output_price_per_mtok_usd": OUT_USD,
            },
            # Azure deployment names are the operator's: priced in the config, or free.
            {"name": "gpt-4o-v1", "provider": "az-v1", "model": "chat-prod", "free": True},
            {
                "name": "gpt-4o-preview",
                "provider": "az-preview",
                "model": "chat-prod",
                "free": True,
            },
            {
                "name": "embed",
                "provider": "az",
                "model": "embed-prod",
                "mode": "embedding",
                "free": True,
            },
        ],
    }


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., GatewayProcess], fake_azure: FakeAzure) -> GatewayProcess:
    return start_gateway(e2e_config(fake_azure))


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(autouse=True)
def _no_violations(fake_azure: FakeAzure) -> Iterator[None]:
    yield
    assert fake_azure.violations == []


def ask() -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Hello?"}]


def test_chat(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ask(), temperature=0.3
    )
    completion = raw.parse()
    validate(json.loads(raw.http_response.content), "CreateChatCompletionResponse")
    assert completion.choices[0].message.content == fake_azure.reply
    assert raw.headers["x-gateway-provider"] == "az"
    cost = (11 * IN_USD + 7 * OUT_USD) / 1_000_000  # the fake's usage
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost)
    sent = fake_azure.received[-1]
    assert sent.path == "/openai/deployments/chat-prod/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == AZURE_KEY
    assert sent.json["temperature"] == 0.3
    assert "set-cookie" not in raw.headers  # upstream headers stay upstream


def test_other_api_versions(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    client.chat.completions.create(model="gpt-4o-preview", messages=ask())
    assert fake_azure.received[-1].query == {"api-version": "2025-04-01-preview"}
    client.chat.completions.create(model="gpt-4o-v1", messages=ask())
    sent = fake_azure.received[-1]
    assert sent.path == "/openai/v1/chat/completions" and sent.query == {}
    assert sent.json["model"] == "chat-prod"


def test_stream_drops_the_prompt_filter_chunk(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=ask(), stream=True))
    assert all(chunk.choices for chunk in chunks)  # no choice-less chunk, no usage unasked
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == fake_azure.reply
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = fake_azure.received[-1].json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=ask(), stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 7)
    assert all(chunk.choices for chunk in chunks[:-1])


def test_embeddings(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    result = client.embeddings.create(model="embed", input=["a", "b"])
    assert [item.index for item in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 5
    sent = fake_azure.received[-1]
    assert sent.path == "/openai/deployments/embed-prod/embeddings"
    assert sent.query == {"api-version": "2024-10-21"} and sent.json["input"] == ["a", "b"]


def test_rate_limit_passes_its_wait(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    fake_azure.script(Behaviour(status=429, headers={"retry-after": "3"}))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=ask())
    assert info.value.response.headers["retry-after"] == "3"
    assert AZURE_KEY not in info.value.response.text
