"""`POST /v1/messages` (Anthropic's Messages API) end to end: the official anthropic SDK
-> the real gateway -> each provider fake (OpenAI, Anthropic, Gemini) as chat, and back
as Anthropic `message` objects and stream events.

There is no Anthropic schema in the repository (Anthropic publishes no OpenAPI file the
tests could read offline): shapes are checked field by field here (`assert_message`,
`assert_stream`), and parsed by the SDK's own pydantic types."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fakes.anthropic_fake import TOOL_INPUT, AnthropicBehaviour, FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.dialects import ROUTES, reply_of, three_provider_config
from tests.gatewayproc import GatewayProcess

RPM_KEY = "gw-messages-rpm-CANARY-4f0a"
PROVIDERS = ["gpt", "claude", "gemini"]
NO_CACHE = {"cache-control": "no-store"}
STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal")
USAGE_FIELDS = {
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PIXEL_PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    "mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
HI = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> GatewayProcess:
    config = three_provider_config(fake_openai, fake_anthropic, fake_gemini)
    config["auth"]["keys"].append({"name": "one-a-minute", "key": RPM_KEY, "rpm": 1})
    return start_gateway({**config, "cache": {"enabled": True}})


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


# Every request the gateway sent to a fake is one the real API would have accepted.
pytestmark = pytest.mark.usefixtures("no_fake_violations")


# --- shapes ----------------------------------------------------------------------------


def assert_block(block: dict[str, Any]) -> None:
    kind = block["type"]
    if kind == "text":
        assert set(block) == {"type", "text"} and isinstance(block["text"], str)
    elif kind == "tool_use":
        assert set(block) == {"type", "id", "name", "input"}
        assert block["id"] and isinstance(block["name"], str) and block["name"]
        assert isinstance(block["input"], dict)
    else:
        assert kind == "thinking" and set(block) == {"type", "thinking", "signature"}


def assert_usage(usage: dict[str, Any], fields: set[str] = USAGE_FIELDS) -> None:
    assert set(usage) == fields
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in usage.values())


def assert_message(body: dict[str, Any]) -> anthropic.types.Message:
    """Anthropic's Message object, field by field, then as the SDK's type."""
    assert set(body) == {
        "id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage",
    }  # fmt: skip
    assert body["id"].startswith("msg_") and len(body["id"]) > 4
    assert (body["type"], body["role"]) == ("message", "assistant")
    assert isinstance(body["model"], str) and body["model"]
    assert body["stop_reason"] in STOP_REASONS
    assert body["stop_sequence"] is None or isinstance(body["stop_sequence"], str)
    assert isinstance(body["content"], list)
    for block in body["content"]:
        assert_block(block)
    assert_usage(body["usage"])
    return anthropic.types.Message.model_validate(body)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Every frame is `event: <name>` then `data: <json>` whose type is the name."""
    events = []
    for frame in text.strip().split("\n\n"):
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), frame
        name, data = name_line.removeprefix("event: "), json.loads(data_line[6:])
        assert data["type"] == name, frame
        events.append((name, data))
    return events


DELTA_OF_BLOCK = {
    "text": "text_delta",
    "tool_use": "input_json_delta",
    "thinking": "thinking_delta",
}


def assert_stream(events: list[tuple[str, dict[str, Any]]], native: bool = False) -> None:
    """Anthropic's order: message_start, ping, then blocks (start, deltas, stop) with
    indexes 0, 1, ..., then message_delta and message_stop. `native`: an Anthropic
    upstream's own events (its message_delta usage may hold output_tokens only)."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    assert start["stop_reason"] is None and start["stop_sequence"] is None
    assert_usage(start["usage"])
    open_block: tuple[int, str] | None = None
    next_index = 0
    for name, data in events[1:-2]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_block is None and data["index"] == next_index
            block = data["content_block"]
            assert_block(block)
            assert block.get("text", "") == "" and block.get("input", {}) == {}
            open_block, next_index = (next_index, block["type"]), next_index + 1
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == open_block[0]
            assert data["delta"]["type"] == DELTA_OF_BLOCK[open_block[1]]
        else:
            assert name == "content_block_stop" and open_block is not None
            assert data["index"] == open_block[0]
            open_block = None
    assert open_block is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in STOP_REASONS
    assert set(delta["delta"]) == {"stop_reason", "stop_sequence"}
    if native:
        assert "output_tokens" in delta["usage"]
        assert_usage(delta["usage"], set(delta["usage"]) & USAGE_FIELDS)
    else:
        assert_usage(delta["usage"])


def raw_stream(gateway: GatewayProcess, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    answer = httpx.post(
        f"{gateway.url}/v1/messages",
        json={**body, "stream": True},
        headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01", **NO_CACHE},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    return sse_events(answer.text)


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def tool_uses(message: anthropic.types.Message) -> list[anthropic.types.ToolUseBlock]:
    return [b for b in message.content if b.type == "tool_use"]


# --- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", PROVIDERS)
def test_create_on_every_provider(
    client: anthropic.Anthropic,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    raw = client.messages.with_raw_response.create(
        model=route, max_tokens=50, messages=HI, stop_sequences=["END"], temperature=0.5,
        top_k=3, metadata={"user_id": "u-42"}, extra_headers=NO_CACHE,
    )  # fmt: skip
    message = assert_message(json.loads(raw.http_response.content))
    assert text_of(message) == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    assert message.usage.input_tokens > 0
    assert raw.headers["x-gateway-deployment"] == ROUTES[route][0]
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
    if route == "gpt":
        sent = fake_openai.received[-1].json
        assert sent["messages"] == HI and sent["stop"] == ["END"] and sent["user"] == "u-42"
        assert (sent["max_tokens"], sent["temperature"]) == (50, 0.5) and "top_k" not in sent
        assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)
    if route == "claude":
        sent = fake_anthropic.received[-1].json
        assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "u-42"}
        assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 9)


@pytest.mark.parametrize("route", PROVIDERS)
def test_stream_on_every_provider(
    client: anthropic.Anthropic,
    gateway: GatewayProcess,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    reply = reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    with client.messages.stream(
        model=route, max_tokens=50, messages=HI, extra_headers=NO_CACHE
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert text_of(final).strip() == reply and final.stop_reason == "end_turn"
    assert final.id.startswith("msg_") and final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "text" in kinds
    events = raw_stream(gateway, {"model": route, "max_tokens": 50, "messages": HI})
    assert_stream(events, native=route == "claude")
    assert [b["content_block"]["type"] for n, b in events if n == "content_block_start"] == ["text"]
    if route == "gpt":  # the upstream's usage arrives at the end: in message_delta
        assert events[-2][1]["usage"]["input_tokens"] == 11
        assert events[-2][1]["usage"]["output_tokens"] == 7


@pytest.mark.parametrize("route", PROVIDERS)
def test_a_tool_use_then_its_result(
    client: anthropic.Anthropic,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    raw = client.messages.with_raw_response.create(
        model=route, max_tokens=100, messages=question, tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"}, extra_headers=NO_CACHE,
    )  # fmt: skip
    first = assert_message(json.loads(raw.http_response.content))
    assert first.stop_reason == "tool_use"
    (call,) = tool_uses(first)
    assert call.name == "get_weather" and call.input == TOOL_INPUT
    follow_up = [
        *question,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"},
        ]},
    ]  # fmt: skip
    second = client.messages.create(
        model=route, max_tokens=100, messages=follow_up, tools=[WEATHER_TOOL],  # type: ignore[arg-type]
        extra_headers=NO_CACHE,
    )  # fmt: skip
    assert second.stop_reason == "end_turn"
    assert text_of(second) == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    if route == "gpt":
        sent = fake_openai.received[-1].json
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": WEATHER_TOOL["description"],
            "parameters": WEATHER_TOOL["input_schema"]}}]  # fmt: skip
        tool = sent["messages"][-1]
        assert tool == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    if route == "claude":
        blocks = fake_anthropic.received[-1].json["messages"][-1]["content"]
        assert blocks[0] == {"type": "tool_result", "tool_use_id": call.id,
                             "content": "18C and sunny"}  # fmt: skip


@pytest.mark.parametrize("route", PROVIDERS)
def test_a_tool_result_with_an_image_and_text(
    client: anthropic.Anthropic, route: str, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    """A tool result's text becomes the tool message; its image (a tool message holds
    text only) and the turn's other blocks follow in a user message."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PIXEL_PNG}}  # fmt: skip
    client.messages.create(
        model=route, max_tokens=100, tools=[WEATHER_TOOL], extra_headers=NO_CACHE,
        messages=[
            {"role": "user", "content": "Screenshot the weather"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call it.", "signature": "c2ln"},
                {"type": "text", "text": "Taking it."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "is_error": False,
                 "content": [{"type": "text", "text": "Here:"}, image]},
                {"type": "text", "text": "What do you see?"},
            ]},
        ],
    )  # fmt: skip
    if route == "gpt":
        sent = fake_openai.received[-1].json["messages"]
        assert sent[1] == {"role": "assistant", "content": "Taking it.", "tool_calls": [{
            "id": "toolu_01", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}  # fmt: skip
        assert sent[2] == {"role": "tool", "tool_call_id": "toolu_01", "content": "Here:"}
        assert sent[3] == {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL_PNG}"}},
            {"type": "text", "text": "What do you see?"},
        ]}  # fmt: skip
    if route == "claude":  # the client's own body (tests/features/test_messages_native.py)
        sent = fake_anthropic.received[-1].json["messages"]
        assert sent[1]["content"][0]["signature"] == "c2ln"
        assert [b["type"] for b in sent[2]["content"]] == ["tool_result", "text"]
        assert sent[2]["content"][0]["content"][1] == image


@pytest.mark.parametrize("route", PROVIDERS)
def test_a_streamed_tool_use(client: anthropic.Anthropic, route: str) -> None:
    with client.messages.stream(
        model=route, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "get_weather"},
        extra_headers=NO_CACHE,
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (call,) = tool_uses(final)
    assert call.name == "get_weather" and call.input == TOOL_INPUT  # input_json_delta assembled
    assert "input_json" in kinds and kinds[-1] == "message_stop"


def test_a_named_tool_choice_and_no_parallel_calls_go_upstream(
    client: anthropic.Anthropic, fake_openai: FakeOpenAI
) -> None:
    client.messages.create(
        model="gpt", max_tokens=20, messages=HI, tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        extra_headers=NO_CACHE,
    )  # fmt: skip
    sent = fake_openai.received[-1].json
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    client.messages.create(
        model="gpt", max_tokens=20, messages=HI, tools=[WEATHER_TOOL],
        tool_choice={"type": "any"}, extra_headers=NO_CACHE,
    )  # fmt: skip
    assert fake_openai.received[-1].json["tool_choice"] == "required"


@pytest.mark.parametrize("route", PROVIDERS)
def test_system_blocks_and_images(
    client: anthropic.Anthropic,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    message = client.messages.create(
        model=route,
        max_tokens=50,
        system=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PIXEL_PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        ]}],
        extra_headers=NO_CACHE,
    )  # fmt: skip
    assert text_of(message) == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    system = "You are terse.\n\nAnswer in English."
    if route == "gpt":
        sent = fake_openai.received[-1].json["messages"]
        assert sent[0] == {"role": "system", "content": system}
        assert sent[1]["content"] == [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL_PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]
    if route == "claude":  # the client's own body: its system blocks as they were
        sent = fake_anthropic.received[-1].json
        assert sent["system"][1]["cache_control"] == {"type": "ephemeral"}
        images = [b["source"] for b in sent["messages"][0]["content"] if b["type"] == "image"]
        assert images == [
            {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG},
            {"type": "url", "url": "https://example.com/cat.png"},
        ]
    if route == "gemini":
        parts = fake_gemini.received[-1].json["contents"][0]["parts"]
        assert {"inlineData": {"mimeType": "image/png", "data": PIXEL_PNG}} in parts


def test_count_tokens_is_the_gateway_estimate(
    client: anthropic.Anthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    short = client.messages.count_tokens(model="claude", messages=[
        {"role": "user", "content": "x" * 40}])  # fmt: skip
    assert short.input_tokens == 10  # 40 characters, 4 a token
    longer = client.messages.count_tokens(
        model="claude", system="y" * 400, messages=[{"role": "user", "content": "x" * 40}],
        tools=[WEATHER_TOOL],
    )  # fmt: skip
    assert longer.input_tokens > short.input_tokens + 100
    assert fake_openai.calls == fake_anthropic.calls == fake_gemini.calls == 0  # no upstream
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=HI)
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.count_tokens(model="gpt", messages=[{"role": "system", "content": "x"}])  # type: ignore[misc,list-item]
    assert anthropic_error(raised.value, "invalid_request_error").startswith("messages.0.role: ")


def test_falls_over_to_the_next_provider(
    client: anthropic.Anthropic, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    fake_openai.script(Behaviour(status=503), Behaviour(status=503))
    raw = client.messages.with_raw_response.create(
        model="gpt-then-claude-then-gemini", max_tokens=50, messages=HI, extra_headers=NO_CACHE
    )
    assert text_of(raw.parse()) == fake_anthropic.reply
    assert raw.headers["x-gateway-deployment"] == "claude"
    with client.messages.stream(
        model="gpt-then-claude-then-gemini", max_tokens=50, messages=HI, extra_headers=NO_CACHE
    ) as stream:
        final = stream.get_final_message()
    assert text_of(final).strip() == fake_anthropic.reply
    assert fake_openai.calls == 2


def test_a_cached_answer_replays_as_a_message(
    client: anthropic.Anthropic, gateway: GatewayProcess, fake_gemini: FakeGemini
) -> None:
    question = [{"role": "user", "content": "cache me as a message"}]
    first = client.messages.with_raw_response.create(model="gemini", max_tokens=64,
                                                     messages=question)  # fmt: skip
    calls = fake_gemini.calls
    hit = client.messages.with_raw_response.create(model="gemini", max_tokens=64,
                                                   messages=question)  # fmt: skip
    assert fake_gemini.calls == calls and hit.headers["x-gateway-cache"] == "HIT"
    stored = assert_message(json.loads(hit.http_response.content))
    assert stored.content == first.parse().content
    assert text_of(stored) == fake_gemini.reply
    with client.messages.stream(model="gemini", max_tokens=64, messages=question) as stream:
        replayed = stream.get_final_message()
    assert fake_gemini.calls == calls and text_of(replayed) == fake_gemini.reply
    assert replayed.usage.output_tokens == stored.usage.output_tokens
    # The same request through chat is another entry: the cache key has the dialect.
    chat = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "gemini", "max_tokens": 64, "messages": question},
        headers={"authorization": f"Bearer {GATEWAY_KEY}"},
    )
    assert chat.headers["x-gateway-cache"] == "MISS"


def test_a_cached_tool_use_replays_as_a_stream(
    client: anthropic.Anthropic, fake_openai: FakeOpenAI
) -> None:
    question = [{"role": "user", "content": "cached weather?"}]
    client.messages.create(model="gpt", max_tokens=64, messages=question, tools=[WEATHER_TOOL])
    calls = fake_openai.calls
    with client.messages.stream(
        model="gpt", max_tokens=64, messages=question, tools=[WEATHER_TOOL]
    ) as stream:
        replayed = stream.get_final_message()
    assert fake_openai.calls == calls
    (call,) = tool_uses(replayed)
    assert call.input == TOOL_INPUT and replayed.stop_reason == "tool_use"


# --- errors ----------------------------------------------------------------------------


def anthropic_error(error: anthropic.APIStatusError, kind: str) -> str:
    body = error.body
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind and isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


def test_a_missing_max_tokens_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.post("/v1/messages", cast_to=httpx.Response, body={"model": "gpt", "messages": HI})
    assert anthropic_error(raised.value, "invalid_request_error") == "max_tokens: Field required"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"max_tokens": "10"}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
         "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "file", "file_id": "file_1"}}]}]}, "messages.0.content.0.source.type"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"name": "t"}]}, "tools.0.input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"metadata": "me"}, "metadata"),
        ({"system": 3}, "system"),
    ],
)  # fmt: skip
def test_invalid_bodies_are_anthropic_shaped_400s(
    client: anthropic.Anthropic, extra: dict[str, Any], path: str
) -> None:
    body = {"model": "gpt", "max_tokens": 10, "messages": HI, **extra}
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.post("/v1/messages", cast_to=httpx.Response, body=body)
    assert anthropic_error(raised.value, "invalid_request_error").startswith(f"{path}: ")


def test_unknown_fields_and_anthropic_headers_are_accepted(
    client: anthropic.Anthropic, fake_openai: FakeOpenAI
) -> None:
    message = client.messages.create(
        model="gpt", max_tokens=10, messages=HI, service_tier="auto",
        extra_body={"context_management": {"edits": []}, "container": None},
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14", **NO_CACHE},
    )  # fmt: skip
    assert text_of(message) == fake_openai.reply
    assert set(fake_openai.received[-1].json) == {"model", "max_tokens", "messages"}


def test_a_wrong_key_is_an_authentication_error(gateway: GatewayProcess) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key="wrong", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            sdk.messages.create(model="gpt", max_tokens=10, messages=HI)
        anthropic_error(raised.value, "authentication_error")
        with pytest.raises(anthropic.AuthenticationError):
            sdk.messages.count_tokens(model="gpt", messages=HI)


def test_an_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="claude-nope", max_tokens=10, messages=HI)
    assert "claude-nope" in anthropic_error(raised.value, "not_found_error")


def test_a_key_over_its_rpm_is_rate_limited(gateway: GatewayProcess) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key=RPM_KEY, max_retries=0) as sdk:
        sdk.messages.create(model="gpt", max_tokens=10, messages=HI, extra_headers=NO_CACHE)
        with pytest.raises(anthropic.RateLimitError) as raised:
            sdk.messages.create(model="gpt", max_tokens=10, messages=HI, extra_headers=NO_CACHE)
    anthropic_error(raised.value, "rate_limit_error")
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_upstream_failures_are_anthropic_shaped(
    client: anthropic.Anthropic, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    fake_openai.script(Behaviour(status=429, headers={"retry-after": "3"}))
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="gpt", max_tokens=10, messages=HI, extra_headers=NO_CACHE)
    anthropic_error(limited.value, "rate_limit_error")
    fake_anthropic.script(Behaviour(status=529))
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="claude", max_tokens=10, messages=HI, extra_headers=NO_CACHE)
    anthropic_error(failed.value, "api_error")  # the gateway's 502: every deployment failed


def test_a_failure_mid_stream_is_an_error_event(
    client: anthropic.Anthropic, gateway: GatewayProcess, fake_anthropic: FakeAnthropic
) -> None:
    # message_start, content_block_start, ping, two text deltas: then the error (apart,
    # so that the first content is relayed, the commit point, before the error comes);
    # the upstream's own events as it sent them (a native stream), then the error
    failing = AnthropicBehaviour(error_event_after=5, chunk_delay_s=0.05)
    fake_anthropic.script(failing)
    events = raw_stream(gateway, {"model": "claude", "max_tokens": 50, "messages": HI})
    names = [name for name, _ in events]
    assert (
        names[:5] == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 2
    )
    assert names[-1] == "error" and "message_delta" not in names and "message_stop" not in names
    body = events[-1][1]
    assert set(body) == {"type", "error"} and body["error"]["type"] == "api_error"
    fake_anthropic.script(AnthropicBehaviour(error_event_after=5, chunk_delay_s=0.05))
    with pytest.raises(anthropic.APIStatusError):  # noqa: PT012
        with client.messages.stream(
            model="claude", max_tokens=50, messages=HI, extra_headers=NO_CACHE
        ) as stream:
            stream.get_final_message()


# --- a Claude Code session ---------------------------------------------------------------

CLAUDE_CODE_BETAS = [
    "claude-code-20250219",
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
]
CLAUDE_CODE_SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
     "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with "
     "software engineering tasks.", "cache_control": {"type": "ephemeral"}},
]  # fmt: skip
CLAUDE_CODE_TOOLS = [
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}},
]


@pytest.mark.parametrize("route", PROVIDERS)
def test_a_claude_code_shaped_session(
    client: anthropic.Anthropic,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    """What Claude Code sends (ANTHROPIC_BASE_URL=gateway): the beta endpoints
    (`?beta=true`, anthropic-beta), system blocks with cache_control, tools, thinking,
    metadata.user_id, a streamed tool use, then the streamed tool_result turn, and
    count_tokens. (Its max_tokens is capped to the deployments' max_output_tokens,
    8192 here, as CLAUDE_CODE_MAX_OUTPUT_TOKENS does.)"""
    common: dict[str, Any] = {
        "model": route,
        "system": CLAUDE_CODE_SYSTEM,
        "tools": CLAUDE_CODE_TOOLS,
        "betas": CLAUDE_CODE_BETAS,
        "extra_headers": NO_CACHE,
    }
    turn = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>context</system-reminder>"},
        {"type": "text", "text": "Read README.md", "cache_control": {"type": "ephemeral"}},
    ]}]  # fmt: skip
    counted = client.beta.messages.count_tokens(messages=turn, **common)  # type: ignore[arg-type]
    assert counted.input_tokens > 0
    request = {**common, "max_tokens": 8192, "temperature": 1,
               "metadata": {"user_id": "user_abc_account_def_session_0001"},
               "thinking": {"type": "enabled", "budget_tokens": 4000}}  # fmt: skip
    with client.beta.messages.stream(messages=turn, **request) as stream:  # type: ignore[arg-type]
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "Read" and isinstance(call.input, dict)
    turn += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": [{"type": "text", "text": "# README"}]}]},
    ]  # fmt: skip
    with client.beta.messages.stream(messages=turn, **request) as stream:  # type: ignore[arg-type]
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn"
    assert text_of(second).strip() == reply_of(route, fake_openai, fake_anthropic, fake_gemini)  # type: ignore[arg-type]
    if route == "gpt":
        sent = fake_openai.received[-1].json
        assert sent["messages"][0]["content"] == "\n\n".join(b["text"] for b in CLAUDE_CODE_SYSTEM)
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.id,
                                        "content": "# README"}  # fmt: skip
        assert "thinking" not in sent and "cache_control" not in json.dumps(sent)
        assert sent["user"] == "user_abc_account_def_session_0001"
