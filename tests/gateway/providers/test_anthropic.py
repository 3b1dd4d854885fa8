"""Golden tests for the Anthropic adapter: pure translation, no network.

Fixtures in fixtures/anthropic/ are modelled on Anthropic's API reference examples:
request_*.json (OpenAI body in -> exact Anthropic body out), response_*.json (Anthropic
message in -> exact OpenAI completion out) and stream_*.sse (recorded events in -> the
exact OpenAI chunk sequence in stream_*.json out). Every expected Anthropic body is also
checked against the fake Anthropic server's validator, so the fixtures and the fake
agree on what the real API accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.config.catalog import Deployment
from gateway.config.pricing import Prices
from gateway.config.schema import ProviderConfig, parse_config
from gateway.dialects.openai_chat import parse_chat_request
from gateway.errors import (
    InvalidRequestError,
    ProviderError,
    UpstreamAuthError,
    UpstreamContextLengthError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.providers.anthropic.adapter import AnthropicProvider, UnsupportedByProviderError
from gateway.providers.anthropic.response import AnthropicStream, from_anthropic
from gateway.providers.registry import adapter_class
from gateway.transport.sse import SSEDecoder
from gateway.types import ChatRequest, EmbeddingRequest, SSEEvent
from gateway.validate_config import reference_problems
from tests.fakes.anthropic_fake import body_problems

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
KEY = "sk-ant-test-key-CANARY-0000"
CREATED_S = 1_700_000_000
ASK = [{"role": "user", "content": "Hi"}]


def provider(**config: Any) -> AnthropicProvider:
    return AnthropicProvider("claude", ProviderConfig(kind="anthropic", api_key=KEY, **config))


def deployment(max_output_tokens: int | None = None) -> Deployment:
    return Deployment(
        id="claude/claude-sonnet-4-5",
        name="claude-public",
        provider="claude",
        kind="anthropic",
        model="claude-sonnet-4-5",
        mode="chat",
        prices=Prices(3.0, 15.0),
        context_window_tokens=200_000,
        max_output_tokens=max_output_tokens,
        capabilities=frozenset({"tools", "vision", "json_schema", "stream"}),
    )


def chat(body: dict[str, Any]) -> ChatRequest:
    return parse_chat_request(jsonutil.dumps(body), RequestLimits())


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def names(prefix: str, suffix: str = ".json") -> list[str]:
    return sorted(p.name for p in FIXTURES.glob(f"{prefix}*{suffix}"))


# --- requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", names("request_"))
def test_request_golden(name: str) -> None:
    case = fixture(name)
    d = deployment(**case.get("deployment", {}))
    sent = provider().chat_request(chat(case["openai"]), d)
    assert jsonutil.loads(sent.body or b"") == case["anthropic"]
    assert body_problems(case["anthropic"]) == []  # what the real API would accept


def test_request_url_and_headers() -> None:
    sent = provider(headers={"anthropic-beta": "some-beta"}).chat_request(
        chat({"model": "m", "messages": ASK}), deployment()
    )
    assert sent.url == "https://api.anthropic.com/v1/messages"
    assert dict(sent.headers) == {
        "content-type": "application/json",
        "anthropic-beta": "some-beta",
        "anthropic-version": "2023-06-01",
        "x-api-key": KEY,
    }
    assert not any(name.lower() == "authorization" for name in sent.headers)


def test_request_api_version_and_base_url_overrides() -> None:
    p = provider(api_version="2023-01-01", base_url="http://127.0.0.1:9/v1/")
    sent = p.chat_request(chat({"model": "m", "messages": ASK}), deployment())
    assert sent.url == "http://127.0.0.1:9/v1/messages"
    assert sent.headers["anthropic-version"] == "2023-01-01"


@pytest.mark.parametrize(
    ("openai", "anthropic"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
    ids=["auto", "required", "none", "named"],
)
def test_tool_choice_variants(openai: Any, anthropic: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    body = {"model": "m", "messages": ASK, "tools": tools, "tool_choice": openai}
    out = jsonutil.loads(provider().chat_request(chat(body), deployment()).body or b"")
    assert out["tool_choice"] == anthropic
    assert body_problems(out) == []


def test_parallel_tool_calls_false_without_tool_choice_and_with_none() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    base = {"model": "m", "messages": ASK, "tools": tools, "parallel_tool_calls": False}
    out = jsonutil.loads(provider().chat_request(chat(base), deployment()).body or b"")
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    none = jsonutil.loads(
        provider().chat_request(chat({**base, "tool_choice": "none"}), deployment()).body or b""
    )
    assert none["tool_choice"] == {"type": "none"}  # "none" takes no parallel flag
    no_tools = {"model": "m", "messages": ASK, "tool_choice": "auto"}
    assert "tool_choice" not in jsonutil.loads(
        provider().chat_request(chat(no_tools), deployment()).body or b""
    )


def test_pdf_file_part_becomes_document_block() -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
    }
    body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    out = jsonutil.loads(provider().chat_request(chat(body), deployment()).body or b"")
    source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    assert out["messages"][0]["content"] == [{"type": "document", "source": source}]


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


TOOLS = [{"type": "function", "function": {"name": "f"}}]
BAD_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not"}}
NO_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x"}}
UNSUPPORTED = {
    "n": ({"n": 2}, "n"),
    "logprobs": ({"logprobs": True}, "logprobs"),
    "audio": ({"modalities": ["text", "audio"]}, "audio"),
    "json-object": ({"response_format": {"type": "json_object"}}, "response_format"),
    "schema-missing": ({"response_format": NO_SCHEMA}, "response_format.json_schema.schema"),
    "allowed-tools": ({"tool_choice": {"type": "allowed_tools"}, "tools": TOOLS}, "tool_choice"),
    "custom-tool": ({"tools": [{"type": "custom", "function": {"name": "f"}}]}, "tools[0]"),
    "function-role": ({"messages": [{"role": "function", "content": "x"}]}, "messages[0]"),
    "audio-part": (
        user({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
        "messages[0].content[0]",
    ),
    "ftp-image": (user(image("ftp://x/y.png")), "messages[0].content[0].image_url.url"),
    "not-base64": (user(image("data:image/png,abc")), "messages[0].content[0].image_url.url"),
    "file-id": (user({"type": "file", "file": {"file_id": "f1"}}), "messages[0].content[0]"),
    "bad-arguments": (
        {"messages": [*ASK, {"role": "assistant", "tool_calls": [BAD_CALL]}]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    "tool-without-id": (
        {"messages": [*ASK, {"role": "tool", "content": "x"}]},
        "messages[1].tool_call_id",
    ),
}


@pytest.mark.parametrize(("extra", "param"), UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_or_malformed_is_400_naming_param(extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": ASK, **extra}
    with pytest.raises(InvalidRequestError) as info:
        provider().chat_request(chat(body), deployment())
    assert info.value.status == 400 and info.value.param == param


def test_embeddings_are_refused_and_config_check_flags_them() -> None:
    with pytest.raises(UnsupportedByProviderError) as info:
        provider().embeddings_request(EmbeddingRequest("e", ["x"], {}), deployment())
    assert info.value.status == 400 and "embeddings" in info.value.message
    config = parse_config(
        "providers: {claude: {kind: anthropic, api_key: k}}\n"
        "models: [{name: e, provider: claude, model: x, mode: embedding}]\n",
        "g",
        {},
    )
    assert reference_problems(config) == ["models[0].mode: Anthropic has no embeddings API"]


def test_registry_resolves_the_adapter() -> None:
    assert adapter_class("anthropic") is AnthropicProvider


# --- responses ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", names("response_"))
def test_response_golden(name: str) -> None:
    case = fixture(name)
    response = from_anthropic(case["anthropic"], CREATED_S)
    assert response.body == case["openai"]
    assert response.usage is not None
    expected = case["usage"]
    assert (
        response.usage.prompt_tokens,
        response.usage.completion_tokens,
        response.usage.cached_tokens,
        response.usage.cache_write_tokens,
    ) == (
        expected["prompt_tokens"],
        expected["completion_tokens"],
        expected["cached_tokens"],
        expected["cache_write_tokens"],
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reason_mapping(stop_reason: str, finish: str) -> None:
    message = fixture("response_text.json")["anthropic"]
    body = from_anthropic({**message, "stop_reason": stop_reason}, CREATED_S).body
    assert body["choices"][0]["finish_reason"] == finish


def test_provider_parses_bytes_with_a_current_timestamp() -> None:
    import time

    raw = jsonutil.dumps(fixture("response_text.json")["anthropic"])
    body = provider().chat_response(raw, deployment()).body
    assert abs(body["created"] - time.time()) < 5
    for bad in (b"not json", b"[]", b'{"id": "msg_1"}'):
        with pytest.raises(UpstreamUnavailableError):
            provider().chat_response(bad, deployment())


# --- streams -----------------------------------------------------------------------------


def sse_events(name: str) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = []
    for line in (FIXTURES / name).read_bytes().splitlines(keepends=True):
        event = decoder.feed_line(line)
        if event is not None:
            events.append(event)
    return events


def new_stream() -> AnthropicStream:
    return AnthropicStream(CREATED_S, provider().classify_error)


@pytest.mark.parametrize("name", names("stream_", ".sse"))
def test_stream_golden(name: str) -> None:
    expected = fixture(name.replace(".sse", ".json"))
    stream = new_stream()
    chunks = []
    for event in sse_events(name):
        assert not stream.done  # message_stop is the last event
        chunks.extend(stream.feed(event))
    assert stream.done
    assert chunks == expected["chunks"]
    assert stream.usage_chunk() == expected["usage_chunk"]
    assert stream.usage is not None
    usage = expected["usage"]
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert (stream.usage.cached_tokens, stream.usage.cache_write_tokens) == (
        usage["cached_tokens"],
        usage["cache_write_tokens"],
    )


def test_stream_arguments_assemble_to_the_tool_input() -> None:
    stream = new_stream()
    arguments: dict[int, str] = {}
    for event in sse_events("stream_tool_use.sse"):
        for chunk in stream.feed(event):
            for call in chunk["choices"][0]["delta"].get("tool_calls", []):
                arguments[call["index"]] = (
                    arguments.get(call["index"], "") + call["function"]["arguments"]
                )
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"location": "San Francisco, CA", "unit": "fahrenheit"},
        1: {},
    }


def test_usage_chunk_only_after_message_delta() -> None:
    stream = new_stream()
    events = sse_events("stream_tool_use.sse")
    for event in events[:-2]:
        stream.feed(event)
        assert stream.usage_chunk() is None and stream.usage is None
    stream.feed(events[-2])
    assert stream.usage_chunk() is not None and not stream.done


@pytest.mark.parametrize(
    ("error_type", "expected", "retryable"),
    [
        ("overloaded_error", UpstreamUnavailableError, True),
        ("api_error", UpstreamUnavailableError, True),
        ("rate_limit_error", UpstreamRateLimitedError, True),
        ("timeout_error", UpstreamTimeoutError, True),
        ("invalid_request_error", UpstreamRejectedError, False),
    ],
)
def test_stream_error_event_raises(
    error_type: str, expected: type[ProviderError], retryable: bool
) -> None:
    stream = new_stream()
    stream.feed(sse_events("stream_tool_use.sse")[0])
    data = json.dumps({"type": "error", "error": {"type": error_type, "message": "Overloaded"}})
    with pytest.raises(ProviderError) as info:
        stream.feed(SSEEvent(data, "error"))
    assert type(info.value) is expected and info.value.retryable is retryable


def test_stream_rejects_garbage() -> None:
    for data in ("{not json", "[1]", '{"type": "message_start"}'):
        with pytest.raises(UpstreamUnavailableError):
            new_stream().feed(SSEEvent(data))


# --- errors ------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}
    return jsonutil.dumps(body)


TOO_LONG = "prompt is too long: 210000 tokens > 200000 maximum"
OVER_LIMIT = "input length and `max_tokens` exceed context limit: 199000 + 4096 > 200000"
ERRORS = {
    "invalid": (400, "invalid_request_error", "messages: text blocks must be non-empty"),
    "prompt-too-long": (400, "invalid_request_error", TOO_LONG),
    "context-limit": (400, "invalid_request_error", OVER_LIMIT),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "billing": (402, "billing_error", "credit balance is too low"),
    "permission": (403, "permission_error", "not allowed"),
    "not-found": (404, "not_found_error", "model: claude-nope"),
    "too-large": (413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
    "rate-limit": (429, "rate_limit_error", "Number of request tokens has exceeded your limit."),
    "api-error": (500, "api_error", "Internal server error"),
    "timeout": (504, "timeout_error", "Request timeout"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
}
EXPECTED: dict[str, tuple[type[ProviderError], int]] = {
    "invalid": (UpstreamRejectedError, 400),
    "prompt-too-long": (UpstreamContextLengthError, 400),
    "context-limit": (UpstreamContextLengthError, 400),
    "auth": (UpstreamAuthError, 502),
    "billing": (UpstreamAuthError, 502),
    "permission": (UpstreamAuthError, 502),
    "not-found": (UpstreamUnavailableError, 502),
    "too-large": (UpstreamRejectedError, 413),
    "rate-limit": (UpstreamRateLimitedError, 429),
    "api-error": (UpstreamUnavailableError, 502),
    "timeout": (UpstreamTimeoutError, 504),
    "overloaded": (UpstreamUnavailableError, 502),
}


@pytest.mark.parametrize("case", ERRORS)
def test_error_mapping(case: str) -> None:
    status, kind, message = ERRORS[case]
    expected, client_status = EXPECTED[case]
    headers = {"retry-after": "7"} if status == 429 else {}
    error = provider().classify_error(status, anthropic_error(kind, message), headers)
    assert type(error) is expected and error.status == client_status
    assert error.upstream_status == status
    body = error.to_openai_body()["error"]
    assert isinstance(body, dict)
    if expected in (UpstreamRejectedError, UpstreamContextLengthError):
        assert message in str(body["message"]) and body["type"] == "invalid_request_error"
    if expected is UpstreamAuthError:
        assert message not in str(body["message"])  # the provider's text about our key stays in
    if status == 413:
        assert body["code"] == "request_too_large"
    if status == 429:
        assert error.retry_after_s == 7 and error.headers() == {"retry-after": "7"}


def test_error_mapping_hides_the_key_and_survives_garbage() -> None:
    error = provider().classify_error(
        400, anthropic_error("invalid_request_error", f"bad {KEY}"), {}
    )
    assert KEY not in error.message and "[redacted]" in error.message
    garbage = provider().classify_error(502, b"<html>bad gateway</html>", {})
    assert isinstance(garbage, UpstreamUnavailableError)
