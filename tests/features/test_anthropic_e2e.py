"""The Anthropic adapter end to end: the official openai SDK -> the real gateway -> the fake
Anthropic Messages API (which rejects what the real API rejects) and back.

Every test ends by checking that the fake recorded no violation, so each request the
gateway sent was one the real API would have accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY
from tests.fakes.anthropic_fake import TOOL_INPUT, TOOL_PREAMBLE, AnthropicBehaviour, FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
    "AAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# Prices of the claude deployments, USD per million tokens.
IN_USD, OUT_USD, CACHED_USD = 3.0, 15.0, 0.3


def claude(name: str, provider: str) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "model": "claude-sonnet-4-5",
        "input_price_per_mtok_usd": IN_USD,
        "output_price_per_mtok_usd": OUT_USD,
        "cached_input_price_per_mtok_usd": CACHED_USD,
        "max_output_tokens": 8192,
        "capabilities": ["tools", "vision", "json_schema", "stream"],
    }


def e2e_config(anthropic: FakeAnthropic, backup: FakeOpenAI) -> dict[str, Any]:
    provider = {
        "kind": "anthropic",
        "base_url": anthropic.base_url,
        "api_key": ANTHROPIC_KEY,
        "timeouts": {"connect_s": 1.0, "read_s": 2.0},
    }
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "server": {"request_timeout_s": 10},
        # Failures must not cool deployments down between tests; the error tests use a
        # deployment of their own (an upstream 401 cools it down at once).
        "routing": {"cooldown_failures": 1000, "same_deployment_retries": 0},
        "providers": {
            "claude": provider,
            "claude-err": dict(provider),
            "oai": {
                "kind": "openai",
                "base_url": f"{backup.base_url}/v1",
                "api_key": OPENAI_KEY,
            },
        },
        "models": [
            claude("claude-test", "claude"),
            claude("claude-errors", "claude-err"),
            {
                "name": "gpt-backup",
                "provider": "oai",
                "model": "gpt-4o-mini",
                "input_price_per_mtok_usd": 0.15,
                "output_price_per_mtok_usd": 0.6,
            },
        ],
        "routes": [
            {
                "name": "claude-then-gpt",
                "policy": "fallback",
                "models": ["claude-test", "gpt-backup"],
            }
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> GatewayProcess:
    return start_gateway(e2e_config(fake_anthropic, fake_openai))


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(autouse=True)
def _no_violations(fake_anthropic: FakeAnthropic) -> Iterator[None]:
    yield
    assert fake_anthropic.violations == []


def ask(text: str = "Hello?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def cost_usd(fake: FakeAnthropic) -> float:
    uncached = fake.input_tokens + fake.cache_creation_tokens  # writes priced as input
    total = uncached * IN_USD + fake.cache_read_tokens * CACHED_USD
    return (total + fake.output_tokens * OUT_USD) / 1_000_000


def access_line(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    """The access log line of a request (written once its response has finished)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for line in gateway.log_text().splitlines():
            if request_id in line and '"access"' in line:
                found: dict[str, Any] = json.loads(line)
                return found
        time.sleep(0.02)
    raise AssertionError(f"no access log line for {request_id}")


def sse(gateway: GatewayProcess, body: dict[str, Any]) -> tuple[httpx.Headers, list[str]]:
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=AUTH, timeout=10
    ) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        return response.headers, lines


# --- chat ----------------------------------------------------------------------------


def test_chat(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-test",
        messages=[{"role": "system", "content": "Be brief."}, *ask()],
        temperature=1.5,
        max_tokens=100,
        stop=["END"],
        user="user-1",
    )
    completion = raw.parse()
    validate(json.loads(raw.http_response.content), "CreateChatCompletionResponse")
    assert completion.choices[0].message.content == fake_anthropic.reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 9)
    assert raw.headers["x-gateway-provider"] == "claude"
    assert raw.headers["x-gateway-tokens-input"] == "21"
    assert raw.headers["x-gateway-tokens-output"] == "9"
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost_usd(fake_anthropic))
    sent = fake_anthropic.received[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in {name.lower() for name in sent.headers}
    assert sent.json["system"] == "Be brief." and sent.json["temperature"] == 1
    assert sent.json["max_tokens"] == 100 and sent.json["stop_sequences"] == ["END"]
    assert sent.json["metadata"] == {"user_id": "user-1"}


def test_max_tokens_default_and_length_finish(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    short = client.chat.completions.create(model="claude-test", messages=ask(), max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == "Hello from"
    client.chat.completions.create(model="claude-test", messages=ask())
    assert fake_anthropic.received[-1].json["max_tokens"] == 4096  # the default (< 8192)


def test_cache_usage_and_cost(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.cache_read_tokens = 1000
    fake_anthropic.cache_creation_tokens = 500
    raw = client.chat.completions.with_raw_response.create(model="claude-test", messages=ask())
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == 21 + 1000 + 500
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1000
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost_usd(fake_anthropic))


# --- streams -------------------------------------------------------------------------


def test_stream_assembles_without_usage_chunk(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    chunks = list(client.chat.completions.create(model="claude-test", messages=ask(), stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == fake_anthropic.reply
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices and c.usage is None for c in chunks)  # no usage unless asked
    sent = fake_anthropic.received[-1].json
    assert sent["stream"] is True and "stream_options" not in sent


def test_stream_with_usage_chunk_and_cost(
    gateway: GatewayProcess, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.cache_read_tokens = 400
    body = {
        "model": "claude-test",
        "messages": ask(),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers, events = sse(gateway, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == 9
    assert usage["prompt_tokens"] == 421 and usage["prompt_tokens_details"]["cached_tokens"] == 400
    assert all("usage" not in c for c in chunks[:-1])
    # Stream headers leave before usage is known: tokens and cost land in the access log.
    assert "x-gateway-cost-usd" not in headers
    logged = access_line(gateway, headers["x-request-id"])
    assert (logged["input_tokens"], logged["output_tokens"]) == (421, 9)
    assert logged["usage_estimated"] is False
    assert logged["cost_usd"] == pytest.approx(cost_usd(fake_anthropic))


# --- tools and images ----------------------------------------------------------------


def test_tools_round_trip(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    first = client.chat.completions.create(
        model="claude-test", messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.content == TOOL_PREAMBLE and message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_INPUT
    messages = [
        *ask("Weather in Paris?"),
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
    ]
    second = client.chat.completions.create(
        model="claude-test", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == fake_anthropic.reply
    turns = fake_anthropic.received[-1].json["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": TOOL_INPUT,
    }
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees, sunny"}
    ]


def test_streamed_tool_call_assembles(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="claude-test",
        messages=ask("Weather?"),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    arguments, names, finish = "", [], None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            if call.function and call.function.name:
                names.append(call.function.name)
            arguments += (call.function.arguments or "") if call.function else ""
    assert names == ["get_weather"] and json.loads(arguments) == TOOL_INPUT
    assert finish == "tool_calls"


def test_image_request(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    content = [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/ant.jpg"}},
    ]
    answer = client.chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == fake_anthropic.reply
    blocks = fake_anthropic.received[-1].json["messages"][0]["content"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_1PX}
    assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/ant.jpg"}


def test_json_schema_uses_structured_outputs(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    client.chat.completions.create(model="claude-test", messages=ask(), response_format=fmt)
    sent = fake_anthropic.received[-1].json
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


# --- errors and fallback ------------------------------------------------------------


def test_anthropic_400_reaches_the_client_with_its_message(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    message = "messages.0.content.0.text: something the API disliked"
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    fake_anthropic.script(Behaviour(status=400, body=body))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-errors", messages=ask())
    assert info.value.status_code == 400 and message in info.value.message
    assert info.value.type == "invalid_request_error"


def test_unsupported_parameter_is_400_before_any_call(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-errors", messages=ask(), n=2)
    assert info.value.param == "n" and fake_anthropic.calls == 0


def test_anthropic_401_is_502_without_the_key(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Behaviour(status=401))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="claude-errors", messages=ask())
    assert info.value.status_code == 502 and info.value.code == "upstream_auth_failed"
    assert ANTHROPIC_KEY not in info.value.response.text


def test_overloaded_falls_back_to_openai(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    fake_anthropic.script(Behaviour(status=529))
    raw = client.chat.completions.with_raw_response.create(model="claude-then-gpt", messages=ask())
    assert raw.parse().choices[0].message.content == fake_openai.reply
    assert raw.headers["x-gateway-attempts"] == "2"
    assert raw.headers["x-gateway-provider"] == "oai"
    assert (fake_anthropic.calls, fake_openai.calls) == (1, 1)
    openai_cost = (11 * 0.15 + 7 * 0.6) / 1_000_000  # the fake OpenAI's usage, gpt prices
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(openai_cost)


def test_stream_overloaded_event_before_content_falls_back(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    fake_anthropic.script(AnthropicBehaviour(error_event_after=1))  # after message_start
    raw = client.chat.completions.with_raw_response.create(
        model="claude-then-gpt", messages=ask(), stream=True
    )
    assert raw.headers["x-gateway-attempts"] == "2"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.strip() == fake_openai.reply


def test_stream_dropped_after_content_ends_in_an_error(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    # Cut after the second text delta; the delay lets the first one arrive for certain
    # (bytes still buffered when a connection drops may be lost with it).
    fake_anthropic.script(Behaviour(drop_after_chunks=5, chunk_delay_s=0.05))
    received = []
    # Closed when done: openai 2.x leaves a stream that raised open (a ResourceWarning).
    with (
        client.chat.completions.create(
            model="claude-errors", messages=ask(), stream=True
        ) as stream,
        pytest.raises(openai.APIError),
    ):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    text = "".join(received)  # what came before the drop, then an error: never a clean end
    assert text.startswith("Hello") and fake_anthropic.reply.startswith(text)
    assert text != fake_anthropic.reply
