"""The Messages dialect's translations that the provider fakes do not produce: reasoning
deltas (OpenAI-compatible servers' `reasoning_content`), a vLLM-style matched stop
sequence, a stream without usage, arguments that are not JSON, documents, and the error
type of every status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.dialects import MESSAGES
from gateway.errors import (
    AllProvidersFailedError,
    AuthenticationError,
    GatewayError,
    GatewayOverloadedError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.types import ChatRequest

LIMITS = RequestLimits()


def parse(**body: Any) -> ChatRequest:
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    return MESSAGES.parse(json.dumps({**base, **body}).encode(), LIMITS)


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().strip().split("\n\n"):
        name, data = frame.split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
    return {"id": "chatcmpl-1", "model": "m", "choices": [choice]}


def test_stream_blocks_open_and_close_as_the_deltas_change_kind() -> None:
    encoder = MESSAGES.stream(parse(stream=True))
    raw = b"".join(
        [
            encoder.chunk(chunk({"role": "assistant", "content": ""})),
            encoder.chunk(chunk({"reasoning_content": "Think"})),
            encoder.chunk(chunk({"reasoning_content": "ing."})),
            encoder.chunk(chunk({"content": "Calling."})),
            encoder.chunk(
                chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}
                        ]
                    }
                )
            ),  # fmt: skip
            encoder.chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]})),
            encoder.chunk(
                chunk(
                    {
                        "tool_calls": [
                            {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}
                        ]
                    }
                )
            ),  # fmt: skip
            encoder.chunk(chunk({}, "tool_calls")),
            encoder.end(None),
        ]
    )
    got = events(raw)
    assert [name for name, _ in got] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    starts = [d["content_block"] for n, d in got if n == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
        {"type": "tool_use", "id": "c2", "name": "g", "input": {}},
    ]
    assert got[3][1]["delta"] == {"type": "thinking_delta", "thinking": "Think"}
    delta = got[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # No usage came: the gateway's estimates, in every usage field.
    assert set(delta["usage"]) == {
        "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
    }  # fmt: skip
    assert delta["usage"]["input_tokens"] == 1 and delta["usage"]["output_tokens"] > 0


def test_an_empty_stream_still_has_its_envelope() -> None:
    encoder = MESSAGES.stream(parse(stream=True))
    usage = {"prompt_tokens": 9, "completion_tokens": 0, "prompt_tokens_details": {
        "cached_tokens": 4}}  # fmt: skip
    got = events(encoder.end({"id": "x", "model": "m", "choices": [], "usage": usage}))
    assert [n for n, _ in got] == ["message_start", "ping", "message_delta", "message_stop"]
    assert got[2][1]["usage"] == {"input_tokens": 5, "output_tokens": 0,
                                  "cache_creation_input_tokens": 0,
                                  "cache_read_input_tokens": 4}  # fmt: skip


def test_the_message_from_a_completion() -> None:
    req = parse(stop_sequences=["###"])
    completion = {
        "id": "chatcmpl-abc",
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "stop_reason": "###", "message": {
            "role": "assistant", "content": "Done", "reasoning_content": "Hmm",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": "not json"}}]}}],
    }  # fmt: skip
    message = jsonutil.loads(MESSAGES.answer(completion, req))
    assert message["id"] == "msg_abc"
    assert message["content"] == [
        {"type": "thinking", "thinking": "Hmm", "signature": ""},
        {"type": "text", "text": "Done"},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"arguments": "not json"}},
    ]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "###")
    completion["choices"][0]["finish_reason"] = "length"
    assert jsonutil.loads(MESSAGES.answer(completion, req))["stop_reason"] == "max_tokens"
    completion["choices"][0]["finish_reason"] = "content_filter"
    assert jsonutil.loads(MESSAGES.answer(completion, req))["stop_reason"] == "refusal"


def test_documents_and_what_is_dropped() -> None:
    req = parse(
        messages=[{"role": "user", "content": [
            {"type": "document", "title": "a.pdf", "cache_control": {"type": "ephemeral"},
             "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "plain"}},
        ]}],
        top_k=5, thinking={"type": "adaptive"}, service_tier="auto",
        output_config={"effort": "high", "format": {"type": "json_schema",
                                                   "schema": {"type": "object"}}},
    )  # fmt: skip
    assert req.messages == [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf",
                                  "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "plain"},
    ]}]  # fmt: skip
    assert set(req.body) == {"model", "max_tokens", "messages", "response_format"}
    assert req.wants_json_schema


def test_count_tokens_bodies_need_no_max_tokens() -> None:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 8}]})
    req = MESSAGES.parse_count(raw.encode(), LIMITS)
    assert req.prompt_chars() == 8 and "max_tokens" not in req.body
    with pytest.raises(InvalidRequestError, match="^max_tokens: Field required$"):
        MESSAGES.parse(raw.encode(), LIMITS)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequestError("x"), "invalid_request_error"),
        (AuthenticationError("x"), "authentication_error"),
        (PermissionDeniedError("x"), "permission_error"),
        (ModelNotFoundError("x"), "not_found_error"),
        (PayloadTooLargeError("x"), "request_too_large"),
        (RateLimitedError("x"), "rate_limit_error"),
        (QuotaExceededError("x"), "rate_limit_error"),
        (GatewayError("x"), "api_error"),
        (UpstreamUnavailableError("x"), "api_error"),
        (GatewayOverloadedError("x"), "overloaded_error"),
        (UpstreamTimeoutError("x"), "timeout_error"),
        (AllProvidersFailedError([UpstreamTimeoutError("x")]), "timeout_error"),
    ],
)
def test_error_types_follow_the_status(error: GatewayError, kind: str) -> None:
    body = MESSAGES.error_body(error)
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}}
    assert events(MESSAGES.stream(parse()).error(error)) == [("error", body)]
