"""The Gemini adapter end to end: the official openai SDK -> the real gateway -> the fake
Gemini API (which rejects what the real API rejects) and back.

Every test ends by checking that the fake recorded no violation, so each request the
gateway sent was one the real API would have accepted (key in the header, never in the
URL; valid contents, parts, tools and generationConfig).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, GEMINI_KEY, OPENAI_KEY
from tests.fakes.gemini_fake import RETRY_DELAY_S, TOOL_ARGS, FakeGemini, GeminiBehaviour
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
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
    "AAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# Prices of the gemini deployments, USD per million tokens.
IN_USD, OUT_USD, CACHED_USD, EMBED_USD = 0.3, 2.5, 0.075, 0.15


def gemini(name: str, provider: str) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "model": "gemini-2.5-flash",
        "input_price_per_mtok_usd": IN_USD,
        "output_price_per_mtok_usd": OUT_USD,
        "cached_input_price_per_mtok_usd": CACHED_USD,
        "capabilities": ["tools", "vision", "json_schema", "stream"],
    }


def e2e_config(fake: FakeGemini, backup: FakeOpenAI) -> dict[str, Any]:
    provider = {
        "kind": "gemini",
        "base_url": f"{fake.base_url}/v1beta",
        "api_key": GEMINI_KEY,
        "timeouts": {"connect_s": 1.0, "read_s": 2.0},
    }
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "server": {"request_timeout_s": 10},
        # Failures must not cool deployments down between tests; the error tests use a
        # deployment of their own (an upstream auth failure cools it down at once).
        "routing": {"cooldown_failures": 1000, "same_deployment_retries": 0},
        "providers": {
            "gem": provider,
            "gem-err": dict(provider),
            "oai": {"kind": "openai", "base_url": f"{backup.base_url}/v1", "api_key": OPENAI_KEY},
        },
        "models": [
            gemini("gemini-test", "gem"),
            gemini("gemini-errors", "gem-err"),
            {
                "name": "gemini-embed",
                "provider": "gem",
                "model": "gemini-embedding-001",
                "mode": "embedding",
                "input_price_per_mtok_usd": EMBED_USD,
            },
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
                "name": "gemini-then-gpt",
                "policy": "fallback",
                "models": ["gemini-test", "gpt-backup"],
            }
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(e2e_config(fake_gemini, fake_openai))


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(autouse=True)
def _no_violations(fake_gemini: FakeGemini) -> Iterator[None]:
    yield
    assert fake_gemini.violations == []
    for received in fake_gemini.received:  # rule 11, whatever the fake accepted
        assert "key" not in received.query and GEMINI_KEY not in received.path


def ask(text: str = "Hello?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def cost_usd(fake: FakeGemini, completion_tokens: int | None = None) -> float:
    completion = fake.candidates_tokens if completion_tokens is None else completion_tokens
    uncached = fake.prompt_tokens - fake.cached_tokens
    total = uncached * IN_USD + fake.cached_tokens * CACHED_USD
    return (total + (completion + fake.thoughts_tokens) * OUT_USD) / 1_000_000


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


def test_chat(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-test",
        messages=[{"role": "system", "content": "Be brief."}, *ask()],
        temperature=1.5,
        max_tokens=100,
        stop=["END"],
        seed=3,
        user="user-1",
    )
    completion = raw.parse()
    validate(json.loads(raw.http_response.content), "CreateChatCompletionResponse")
    assert completion.choices[0].message.content == fake_gemini.reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gemini-2.5-flash"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 6)
    assert raw.headers["x-gateway-provider"] == "gem"
    assert raw.headers["x-gateway-tokens-input"] == "12"
    assert raw.headers["x-gateway-tokens-output"] == "6"
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost_usd(fake_gemini))
    sent = fake_gemini.received[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in {name.lower() for name in sent.headers}
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "Hello?"}]}]
    assert sent.json["generationConfig"] == {
        "temperature": 1.5,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "seed": 3,
    }


def test_length_finish_and_two_candidates(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="gemini-test", messages=ask(), max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == "Hello from"
    two = client.chat.completions.create(model="gemini-test", messages=ask(), n=2)
    assert [c.index for c in two.choices] == [0, 1]


def test_thinking_and_cached_tokens_are_usage_and_cost(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    fake_gemini.prompt_tokens, fake_gemini.cached_tokens, fake_gemini.thoughts_tokens = 900, 800, 40
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-test", messages=ask(), reasoning_effort="low"
    )
    usage = raw.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (900, 46)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 800
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 40
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost_usd(fake_gemini))
    config = fake_gemini.received[-1].json["generationConfig"]
    assert config == {"thinkingConfig": {"thinkingBudget": 1024}}


def test_prompt_blocked_is_a_content_filter_answer(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script(GeminiBehaviour(block_prompt=True))
    completion = client.chat.completions.create(model="gemini-test", messages=ask())
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == ""
    assert completion.usage is not None and completion.usage.prompt_tokens == 12


# --- streams -------------------------------------------------------------------------


def test_stream_assembles_without_usage_chunk(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    chunks = list(client.chat.completions.create(model="gemini-test", messages=ask(), stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == fake_gemini.reply
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices and c.usage is None for c in chunks)  # no usage unless asked
    sent = fake_gemini.received[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"} and "stream" not in sent.json


def test_stream_with_usage_chunk_and_cost(gateway: GatewayProcess, fake_gemini: FakeGemini) -> None:
    fake_gemini.thoughts_tokens = 10
    body = {
        "model": "gemini-test",
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
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens"] == 12
    assert usage["completion_tokens"] == 16
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 10}
    assert all("usage" not in c for c in chunks[:-1])
    # Stream headers leave before usage is known: tokens and cost land in the access log.
    assert "x-gateway-cost-usd" not in headers
    logged = access_line(gateway, headers["x-request-id"])
    assert (logged["input_tokens"], logged["output_tokens"]) == (12, 16)
    assert logged["usage_estimated"] is False
    assert logged["cost_usd"] == pytest.approx(cost_usd(fake_gemini))


def test_stream_dropped_after_content_ends_in_an_error(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    # Cut after the second word; the delay lets the first one arrive for certain.
    fake_gemini.script(Behaviour(drop_after_chunks=2, chunk_delay_s=0.05))
    received = []
    # Closed when done: openai 2.x leaves a stream that raised open (a ResourceWarning).
    with (
        client.chat.completions.create(
            model="gemini-errors", messages=ask(), stream=True
        ) as stream,
        pytest.raises(openai.APIError),
    ):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    text = "".join(received)  # what came before the drop, then an error: never a clean end
    assert text.startswith("Hello") and fake_gemini.reply.startswith(text)
    assert text != fake_gemini.reply


# --- tools, images, structured output --------------------------------------------------


def test_tools_round_trip(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    first = client.chat.completions.create(
        model="gemini-test", messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.id == "call_fakeResp01_0" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGS
    declaration = fake_gemini.received[-1].json["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"]["additionalProperties"] is False
    messages = [
        *ask("Weather in Paris?"),
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
    ]
    second = client.chat.completions.create(
        model="gemini-test", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == fake_gemini.reply
    turns = fake_gemini.received[-1].json["contents"]
    assert [t["role"] for t in turns] == ["user", "model", "user"]
    assert turns[1]["parts"] == [{"functionCall": {"name": "get_weather", "args": TOOL_ARGS}}]
    assert turns[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"output": "18 degrees, sunny"}}}
    ]


def test_streamed_tool_call_arrives_whole(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    stream = client.chat.completions.create(
        model="gemini-test",
        messages=ask("Weather?"),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    calls, finish = [], None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        calls.extend(choice.delta.tool_calls or [])
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments or "") == TOOL_ARGS
    assert finish == "tool_calls"
    calling = fake_gemini.received[-1].json["toolConfig"]["functionCallingConfig"]
    assert calling == {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}


def test_image_request(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    content = [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    answer = client.chat.completions.create(
        model="gemini-test", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == fake_gemini.reply
    parts = fake_gemini.received[-1].json["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG_1PX}}
    assert parts[2] == {
        "fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}
    }


def test_json_schema_uses_response_json_schema(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    client.chat.completions.create(model="gemini-test", messages=ask(), response_format=fmt)
    config = fake_gemini.received[-1].json["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}


# --- embeddings ------------------------------------------------------------------------


def test_embeddings_single_and_batch(
    client: openai.OpenAI, gateway: GatewayProcess, fake_gemini: FakeGemini
) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="gemini-embed", input="What is the meaning of life?", dimensions=3
    )
    single = raw.parse()
    assert [len(item.embedding) for item in single.data] == [3]
    assert fake_gemini.received[-1].path == "/v1beta/models/gemini-embedding-001:embedContent"
    assert fake_gemini.received[-1].json["outputDimensionality"] == 3
    # Gemini reports no usage: the gateway estimates it, bills it and says so.
    logged = access_line(gateway, raw.headers["x-request-id"])
    assert logged["usage_estimated"] is True and logged["input_tokens"] > 0
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(
        logged["input_tokens"] * EMBED_USD / 1_000_000
    )
    batch = client.embeddings.create(model="gemini-embed", input=["one", "two", "three"])
    assert [item.index for item in batch.data] == [0, 1, 2]
    assert batch.data[1].embedding[0] == pytest.approx(0.2)  # the fake's second vector
    sent = fake_gemini.received[-1]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert [r["content"]["parts"][0]["text"] for r in sent.json["requests"]] == [
        "one",
        "two",
        "three",
    ]


# --- errors and fallback ---------------------------------------------------------------


def test_gemini_400_reaches_the_client_with_its_message(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    message = "* GenerateContentRequest.generation_config: something the API disliked"
    body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    fake_gemini.script(Behaviour(status=400, body=body))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gemini-errors", messages=ask())
    assert info.value.status_code == 400 and message in info.value.message
    assert info.value.type == "invalid_request_error"


def test_gemini_429_is_429_with_its_retry_delay(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script(Behaviour(status=429))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gemini-errors", messages=ask())
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == str(RETRY_DELAY_S)
    assert fake_gemini.calls == 1


def test_unsupported_parameter_is_400_before_any_call(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gemini-errors", messages=ask(), logprobs=True)
    assert info.value.param == "logprobs" and fake_gemini.calls == 0


def test_gemini_key_refused_is_502_without_the_key(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    body = {
        "error": {
            "code": 400,
            "message": f"API key not valid: {GEMINI_KEY}",
            "status": "INVALID_ARGUMENT",
            "details": details,
        }
    }
    fake_gemini.script(Behaviour(status=400, body=body))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gemini-errors", messages=ask())
    assert info.value.status_code == 502 and info.value.code == "upstream_auth_failed"
    assert GEMINI_KEY not in info.value.response.text


def test_unavailable_falls_back_to_openai(
    client: openai.OpenAI, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    fake_gemini.script(Behaviour(status=503))
    raw = client.chat.completions.with_raw_response.create(model="gemini-then-gpt", messages=ask())
    assert raw.parse().choices[0].message.content == fake_openai.reply
    assert raw.headers["x-gateway-attempts"] == "2"
    assert raw.headers["x-gateway-provider"] == "oai"
    assert (fake_gemini.calls, fake_openai.calls) == (1, 1)
    openai_cost = (11 * 0.15 + 7 * 0.6) / 1_000_000  # the fake OpenAI's usage, gpt prices
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(openai_cost)


def test_stream_error_event_before_content_falls_back(
    client: openai.OpenAI, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    fake_gemini.script(GeminiBehaviour(error_event_after=0))  # UNAVAILABLE as the first event
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-then-gpt", messages=ask(), stream=True
    )
    assert raw.headers["x-gateway-attempts"] == "2"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.strip() == fake_openai.reply
