"""The OpenAI adapter's reading of its Responses API (a `responses_api: true` deployment):
Response objects and stream events into the internal completion and chunks (usage, the
finish reason, tool calls, refusals), failures into the errors they are outside a
stream. The end-to-end path is tests/features/test_responses_native.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.config.catalog import Deployment
from gateway.config.pricing import Prices
from gateway.config.schema import ProviderConfig
from gateway.dialects.openai_chat import parse_chat_request
from gateway.errors import (
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from gateway.providers.openai import OpenAIProvider
from gateway.providers.openai_responses import ResponsesStream
from gateway.types import ChatRequest, NativeBody, SSEEvent

KEY = "sk-openai-test-key-CANARY-5150"


def provider() -> OpenAIProvider:
    return OpenAIProvider("oai", ProviderConfig(kind="openai", api_key=KEY))


def deployment(responses_api: bool = True) -> Deployment:
    return Deployment(
        id="oai/gpt-5", name="gpt", provider="oai", kind="openai", model="gpt-5", mode="chat",
        prices=Prices(1.0, 2.0), context_window_tokens=400_000, max_output_tokens=None,
        capabilities=frozenset({"tools", "stream"}), responses_api=responses_api,
    )  # fmt: skip


def request(stream: bool = False) -> ChatRequest:
    chat = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    req = parse_chat_request(jsonutil.dumps(chat), RequestLimits())
    req.native = NativeBody("responses", {"model": "gpt", "input": "hi", "store": False})
    return req


def answer(status: str, output: list[Any], **extra: Any) -> bytes:
    usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 8},
             "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 4}}  # fmt: skip
    body = {"id": "resp_1", "object": "response", "model": "gpt-5", "status": status,
            "output": output, "usage": usage, **extra}  # fmt: skip
    return json.dumps(body).encode()


TEXT = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]}  # fmt: skip
CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "get_weather",
        "arguments": '{"city": "Paris"}', "status": "completed"}  # fmt: skip


def test_only_a_native_request_to_a_responses_api_deployment_goes_there() -> None:
    sent = provider().chat_request(request(stream=True), deployment())
    assert sent.url.endswith("/responses") and sent.native
    body = json.loads(sent.body)
    assert (body["model"], body["stream"], body["input"]) == ("gpt-5", True, "hi")
    assert provider().chat_request(request(), deployment(False)).url.endswith("/chat/completions")
    plain = parse_chat_request(
        jsonutil.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        RequestLimits(),
    )
    assert provider().chat_request(plain, deployment()).url.endswith("/chat/completions")


def test_a_response_is_read_into_the_completion() -> None:
    read = provider().chat_response(answer("completed", [TEXT, CALL]), deployment())
    (choice,) = read.body["choices"]
    assert choice["message"]["content"] == "Hi there"
    assert choice["message"]["tool_calls"][0]["id"] == "call_9"
    assert choice["finish_reason"] == "tool_calls"
    assert read.usage is not None
    assert (read.usage.prompt_tokens, read.usage.cached_tokens) == (20, 8)
    assert (read.usage.completion_tokens, read.usage.reasoning_tokens) == (9, 4)


@pytest.mark.parametrize(
    ("reason", "finish"), [("max_output_tokens", "length"), ("content_filter", "content_filter")]
)
def test_an_incomplete_response_has_its_finish_reason(reason: str, finish: str) -> None:
    body = answer("incomplete", [TEXT], incomplete_details={"reason": reason})
    read = provider().chat_response(body, deployment())
    assert read.body["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("server_error", UpstreamUnavailableError),
        ("rate_limit_exceeded", UpstreamRateLimitedError),
        ("invalid_prompt", UpstreamRejectedError),
    ],
)
def test_a_failed_response_is_its_error(code: str, error: type[Exception]) -> None:
    body = answer("failed", [], error={"code": code, "message": "it broke"})
    with pytest.raises(error):
        provider().chat_response(body, deployment())


def event(data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(data=json.dumps(data), event=data["type"])


def feed(stream: ResponsesStream, *events: dict[str, Any]) -> list[Any]:
    return [chunk for e in events for chunk in stream.feed(event(e))]


def test_stream_events_are_read_into_chunks() -> None:
    stream = provider().chat_stream(request(stream=True), deployment())
    assert isinstance(stream, ResponsesStream)
    created = {"type": "response.created", "response": {"id": "resp_1", "model": "gpt-5"}}
    chunks = feed(
        stream,
        created,
        {"type": "response.in_progress", "response": {}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hi"},
        {"type": "response.refusal.delta", "item_id": "msg_1", "delta": "No"},
        {"type": "response.output_item.added", "item": {**CALL, "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": "{}"},
        {"type": "response.web_search_call.searching", "item_id": "ws_1"},
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {"refusal": "No"},
        {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ]  # fmt: skip
    assert not stream.done
    completed = json.loads(answer("completed", [TEXT, CALL]))
    (end,) = feed(stream, {"type": "response.completed", "response": completed})
    assert end["choices"][0]["finish_reason"] == "tool_calls"
    assert stream.done and stream.usage is not None and stream.usage.prompt_tokens == 20
    usage_chunk = stream.usage_chunk()
    assert usage_chunk is not None and usage_chunk["usage"]["completion_tokens"] == 9


@pytest.mark.parametrize(
    "failure",
    [
        {"type": "response.failed",
         "response": {"status": "failed", "error": {"code": "server_error", "message": "x"}}},
        {"type": "error", "code": "server_error", "message": "x", "param": None},
    ],
)  # fmt: skip
def test_an_in_band_failure_is_an_upstream_error(failure: dict[str, Any]) -> None:
    stream = ResponsesStream(0, provider().classify_error)
    with pytest.raises(UpstreamUnavailableError):
        feed(stream, failure)
