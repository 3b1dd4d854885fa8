"""The core gateway through the official openai SDK: chat, streams, tools, embeddings, models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import TOOL_ARGUMENTS, FakeOpenAI
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def core_config(fake: FakeOpenAI) -> dict[str, Any]:
    return {
        "auth": {"mode": "keys", "keys": [{"name": "team-a", "key": GATEWAY_KEY, "team": "a"}]},
        "providers": {
            "fake": {
                "kind": "openai",
                "base_url": f"{fake.base_url}/v1",
                "api_key": OPENAI_KEY,
                "headers": {"x-extra": "configured"},
            },
            "sim": {"kind": "simulated"},
        },
        "models": [
            {
                "name": "gpt-test",
                "provider": "fake",
                "model": "gpt-4o-mini",
                "input_price_per_mtok_usd": 0.15,
                "output_price_per_mtok_usd": 0.6,
            },
            {
                "name": "embed-test",
                "provider": "fake",
                "model": "text-embedding-3-small",
                "mode": "embedding",
                "input_price_per_mtok_usd": 0.02,
            },
            {"name": "sim-test", "provider": "sim", "model": "sim"},
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(core_config(fake_openai))


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)


def ask(text: str = "Hello?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_chat_non_stream(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=ask(),
        temperature=0.2,
        seed=7,
        user="u1",
        metadata={"k": "v"},
        stop=["END"],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == fake_openai.reply
    assert completion.usage is not None and completion.usage.total_tokens == 18
    validate(json.loads(raw.http_response.content), "CreateChatCompletionResponse")
    assert raw.headers["x-gateway-deployment"] == "fake/gpt-4o-mini"
    assert raw.headers["x-gateway-provider"] == "fake"
    assert raw.headers["x-request-id"]
    assert "set-cookie" not in raw.headers and "openai-organization" not in raw.headers
    sent = fake_openai.received[-1]
    assert sent.json["model"] == "gpt-4o-mini"  # the upstream id, not the public name
    assert sent.json["seed"] == 7 and sent.json["metadata"] == {"k": "v"}  # passed through
    assert sent.json["stop"] == ["END"] and sent.json["user"] == "u1"
    assert sent.headers["x-extra"] == "configured"
    assert GATEWAY_KEY not in json.dumps(sent.headers)
    assert fake_openai.violations == []


def test_stream_without_usage_strips_usage_chunk(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    chunks = list(client.chat.completions.create(model="gpt-test", messages=ask(), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == fake_openai.reply
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)  # no usage-only chunk reached the client
    assert fake_openai.received[-1].json["stream_options"] == {"include_usage": True}
    assert fake_openai.violations == []


def test_stream_with_usage_and_schema(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    body = {
        "model": "gpt-test",
        "messages": ask(),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events(gateway, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 18
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def sse_events(gateway: GatewayProcess, body: dict[str, Any]) -> list[str]:
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_async_stream_assembles(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
        stream = await client.chat.completions.create(model="gpt-test", messages=ask(), stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return "".join(parts)

    assert asyncio.run(run()).strip() == fake_openai.reply


def test_tools_round_trip(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    first = client.chat.completions.create(
        model="gpt-test", messages=ask("Weather?"), tools=[WEATHER_TOOL], tool_choice="auto"
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.function.arguments == TOOL_ARGUMENTS
    messages = [
        *ask("Weather?"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(
        model="gpt-test", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == fake_openai.reply
    assert fake_openai.violations == []


def test_streamed_tool_call_assembles(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-test", messages=ask("Weather?"), tools=[WEATHER_TOOL], stream=True
    )
    arguments, names = "", []
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            names += [call.function.name] if call.function and call.function.name else []
            arguments += (call.function.arguments or "") if call.function else ""
    assert names == ["get_weather"] and json.loads(arguments) == {"city": "Paris"}


def test_json_schema_response_format_passes_through(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    client.chat.completions.create(model="gpt-test", messages=ask(), response_format=fmt, n=1)
    assert fake_openai.received[-1].json["response_format"] == fmt


def test_embeddings(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    result = client.embeddings.create(model="embed-test", input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 5
    raw = httpx.post(
        f"{gateway.base_url}/embeddings",
        json={"model": "embed-test", "input": "a"},
        headers={"authorization": f"Bearer {GATEWAY_KEY}"},
    )
    validate(raw.json(), "CreateEmbeddingResponse")


def test_models_list_and_retrieve(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"gpt-test", "embed-test", "sim-test"}
    assert client.models.retrieve("sim-test").owned_by == "gateway-simulated"
    raw = httpx.get(
        f"{gateway.base_url}/models", headers={"authorization": f"Bearer {GATEWAY_KEY}"}
    )
    validate(raw.json(), "ListModelsResponse")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_simulated_provider_answers(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="sim-test", messages=ask("same"))
    second = client.chat.completions.create(model="sim-test", messages=ask("same"))
    assert first.choices[0].message.content == second.choices[0].message.content  # deterministic
    assert first.usage is not None and first.usage.completion_tokens == 16


def test_request_id_echoed_or_generated(gateway: GatewayProcess) -> None:
    given = httpx.get(f"{gateway.url}/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123" and given.text == "ok"
    fresh = httpx.get(f"{gateway.url}/healthz", headers={"x-request-id": "bad id <script>"})
    assert len(fresh.headers["x-request-id"]) == 32  # not echoed: a new id


def test_readyz(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ready"
