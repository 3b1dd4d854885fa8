"""Golden tests for the Gemini adapter: pure translation, no network.

Fixtures in fixtures/gemini/ are modelled on the Gemini API reference examples:
request_*.json (OpenAI body in -> exact Gemini body out), response_*.json (Gemini
GenerateContentResponse in -> exact OpenAI completion out) and stream_*.sse (recorded
events in -> the exact OpenAI chunk sequence in stream_*.json out). Every expected Gemini
body is also checked against the fake Gemini server's validator, so the fixtures and the
fake agree on what the real API accepts.
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
from gateway.config.schema import ProviderConfig
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
from gateway.providers.gemini.adapter import GeminiProvider, UnsupportedByProviderError
from gateway.providers.gemini.stream import GeminiStream, finish_reason, from_gemini
from gateway.providers.registry import adapter_class
from gateway.transport.sse import SSEDecoder
from gateway.types import ChatRequest, EmbeddingRequest, SSEEvent
from tests.fakes.gemini_fake import embed_problems, generate_problems

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
KEY = "AIza-test-key-CANARY-0000"
CREATED_S = 1_700_000_000
ASK = [{"role": "user", "content": "Hi"}]
BASE = "https://generativelanguage.googleapis.com/v1beta"


def provider(**config: Any) -> GeminiProvider:
    return GeminiProvider("gem", ProviderConfig(kind="gemini", api_key=KEY, **config))


def deployment(model: str = "gemini-2.5-flash", mode: str = "chat") -> Deployment:
    return Deployment(
        id=f"gem/{model}",
        name="gemini-public",
        provider="gem",
        kind="gemini",
        model=model,
        mode=mode,
        prices=Prices(0.3, 2.5),
        context_window_tokens=1_048_576,
        max_output_tokens=65_536,
        capabilities=frozenset({"tools", "vision", "json_schema", "stream"}),
    )


def chat(body: dict[str, Any]) -> ChatRequest:
    return parse_chat_request(jsonutil.dumps(body), RequestLimits())


def sent_body(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = jsonutil.loads(provider().chat_request(chat(body), deployment()).body)
    return out


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def names(prefix: str, suffix: str = ".json") -> list[str]:
    return sorted(p.name for p in FIXTURES.glob(f"{prefix}*{suffix}"))


# --- requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", names("request_"))
def test_request_golden(name: str) -> None:
    case = fixture(name)
    assert sent_body(case["openai"]) == case["gemini"]
    assert generate_problems(case["gemini"]) == []  # what the real API would accept


def test_request_url_and_headers() -> None:
    p = provider(headers={"x-goog-user-project": "proj"})
    sent = p.chat_request(chat({"model": "m", "messages": ASK}), deployment())
    assert sent.url == f"{BASE}/models/gemini-2.5-flash:generateContent"
    assert dict(sent.headers) == {
        "content-type": "application/json",
        "x-goog-user-project": "proj",
        "x-goog-api-key": KEY,
    }
    stream = p.chat_request(chat({"model": "m", "messages": ASK, "stream": True}), deployment())
    assert stream.url == f"{BASE}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    for request in (sent, stream):
        assert KEY not in request.url and "key=" not in request.url  # rule 11
        assert not any(name.lower() == "authorization" for name in request.headers)
    assert jsonutil.loads(stream.body or b"") == jsonutil.loads(sent.body or b"")  # no flag


def test_base_url_override_and_model_names() -> None:
    p = provider(base_url="http://127.0.0.1:9/v1beta/")
    for model, path in (
        ("gemini-2.0-flash", "models/gemini-2.0-flash"),
        ("models/gemini-2.5-pro", "models/gemini-2.5-pro"),
        ("tunedModels/my-tune", "tunedModels/my-tune"),
    ):
        sent = p.chat_request(chat({"model": "m", "messages": ASK}), deployment(model))
        assert sent.url == f"http://127.0.0.1:9/v1beta/{path}:generateContent"


def test_no_key_sends_no_auth_header() -> None:
    p = GeminiProvider("gem", ProviderConfig(kind="gemini", base_url="http://proxy.local"))
    sent = p.chat_request(chat({"model": "m", "messages": ASK}), deployment())
    assert "x-goog-api-key" not in sent.headers


TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ("none", {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
    ids=["auto", "required", "none", "named"],
)
def test_tool_choice_variants(choice: Any, config: dict[str, Any]) -> None:
    out = sent_body({"model": "m", "messages": ASK, "tools": TOOLS, "tool_choice": choice})
    assert out["toolConfig"] == {"functionCallingConfig": config}
    assert generate_problems(out) == []


def test_no_tool_choice_sends_no_tool_config() -> None:
    out = sent_body({"model": "m", "messages": ASK, "tools": TOOLS})
    assert "toolConfig" not in out and out["tools"] == [
        {"functionDeclarations": [{"name": "get_weather"}]}
    ]
    assert "tools" not in sent_body({"model": "m", "messages": ASK, "tool_choice": "auto"})


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("none", 0), ("minimal", 1024), ("low", 1024), ("medium", 8192), ("high", 24576)],
)
def test_reasoning_effort_sets_the_thinking_budget(effort: str, budget: int) -> None:
    out = sent_body({"model": "m", "messages": ASK, "reasoning_effort": effort})
    assert out["generationConfig"] == {"thinkingConfig": {"thinkingBudget": budget}}


def test_plain_request_has_no_generation_config_or_system() -> None:
    assert sent_body({"model": "m", "messages": ASK}) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}]
    }


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


BAD_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not"}}
NO_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x"}}
UNSUPPORTED = {
    "logprobs": ({"logprobs": True}, "logprobs"),
    "top-logprobs": ({"top_logprobs": 2}, "logprobs"),
    "audio": ({"modalities": ["text", "audio"]}, "audio"),
    "functions": ({"functions": [{"name": "f"}]}, "functions"),
    "effort": ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    "format-type": ({"response_format": {"type": "grammar"}}, "response_format"),
    "schema-missing": ({"response_format": NO_SCHEMA}, "response_format.json_schema.schema"),
    "allowed-tools": ({"tool_choice": {"type": "allowed_tools"}, "tools": TOOLS}, "tool_choice"),
    "custom-tool": ({"tools": [{"type": "custom", "function": {"name": "f"}}]}, "tools[0]"),
    "function-role": ({"messages": [{"role": "function", "content": "x"}]}, "messages[0]"),
    "system-only": ({"messages": [{"role": "system", "content": "Be nice."}]}, "messages"),
    "system-image": (
        {"messages": [{"role": "system", "content": [image("data:image/png;base64,AA==")]}]},
        "messages[0].content[0]",
    ),
    "ftp-image": (user(image("ftp://x/y.png")), "messages[0].content[0].image_url.url"),
    "not-base64": (user(image("data:image/png,abc")), "messages[0].content[0].image_url.url"),
    "audio-format": (
        user({"type": "input_audio", "input_audio": {"data": "AA==", "format": "flac"}}),
        "messages[0].content[0].input_audio",
    ),
    "file-id": (user({"type": "file", "file": {"file_id": "f1"}}), "messages[0].content[0]"),
    "bad-arguments": (
        {"messages": [*ASK, {"role": "assistant", "tool_calls": [BAD_CALL]}]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    "call-without-id": (
        {"messages": [*ASK, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
        "messages[1].tool_calls[0]",
    ),
    "unanswered-tool-id": (
        {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "x"}]},
        "messages[1].tool_call_id",
    ),
}


@pytest.mark.parametrize(("extra", "param"), UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_or_malformed_is_400_naming_param(extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": ASK, **extra}
    with pytest.raises(InvalidRequestError) as info:
        provider().chat_request(chat(body), deployment())
    assert info.value.status == 400 and info.value.param == param


def test_unsupported_parameters_carry_their_code() -> None:
    with pytest.raises(UnsupportedByProviderError) as info:
        sent_body({"model": "m", "messages": ASK, "logprobs": True})
    assert info.value.to_openai_body()["error"] == {
        "message": "'logprobs' asks for token log probabilities. "
        "Gemini deployments do not support it.",
        "type": "invalid_request_error",
        "param": "logprobs",
        "code": "unsupported_parameter",
    }


def test_registry_resolves_the_adapter() -> None:
    assert adapter_class("gemini") is GeminiProvider


# --- responses ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", names("response_"))
def test_response_golden(name: str) -> None:
    case = fixture(name)
    response = from_gemini(case["gemini"], "gemini-2.5-flash", CREATED_S)
    assert response.body == case["openai"]
    assert response.usage is not None
    usage = response.usage
    assert {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    } == case["usage"]


@pytest.mark.parametrize(
    ("reason", "called", "finish"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("OTHER", False, "stop"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("SOMETHING_NEW", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reason_mapping(reason: str | None, called: bool, finish: str) -> None:
    assert finish_reason(reason, called) == finish


def test_provider_parses_bytes_with_a_current_timestamp_and_an_id() -> None:
    import time

    data = fixture("response_text.json")["gemini"]
    del data["responseId"], data["modelVersion"]
    body = provider().chat_response(jsonutil.dumps(data), deployment()).body
    assert abs(body["created"] - time.time()) < 5
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert body["model"] == "gemini-2.5-flash"
    for bad in (b"not json", b"[]", b'{"usageMetadata": {}}', b'{"candidates": []}'):
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


def new_stream(candidates: int = 1) -> GeminiStream:
    return GeminiStream("gemini-2.5-flash", CREATED_S, provider().classify_error, candidates)


@pytest.mark.parametrize("name", names("stream_", ".sse"))
def test_stream_golden(name: str) -> None:
    expected = fixture(name.replace(".sse", ".json"))
    stream = new_stream()
    chunks = []
    for event in sse_events(name):
        assert not stream.done  # the stream has no terminator: done comes with finishReason
        chunks.extend(stream.feed(event))
    assert stream.done
    assert chunks == expected["chunks"]
    assert stream.usage_chunk() == expected["usage_chunk"]


def test_stream_usage_is_the_last_reported() -> None:
    stream = new_stream()
    assert stream.usage_chunk() is None
    events = sse_events("stream_text.sse")
    stream.feed(events[0])
    assert stream.usage is not None and stream.usage.completion_tokens == 0
    for event in events[1:]:
        stream.feed(event)
    assert stream.usage is not None
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (8, 26)
    assert (stream.usage.cached_tokens, stream.usage.reasoning_tokens) == (4, 20)


def gemini_event(data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(json.dumps(data))


def candidate(index: int, text: str | None, reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index}
    if text is not None:
        out["content"] = {"role": "model", "parts": [{"text": text}]}
    if reason:
        out["finishReason"] = reason
    return out


def test_stream_with_two_candidates_is_done_when_both_finished() -> None:
    stream = new_stream(candidates=2)
    first = stream.feed(gemini_event({"candidates": [candidate(0, "A", "STOP")]}))
    assert [c["choices"][0]["index"] for c in first] == [0, 0, 0] and not stream.done
    second = stream.feed(gemini_event({"candidates": [candidate(1, "B", "MAX_TOKENS")]}))
    assert stream.done
    assert [c["choices"][0] for c in second][-1]["finish_reason"] == "length"
    assert second[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_stream_events_without_candidates_produce_nothing() -> None:
    stream = new_stream()
    assert stream.feed(gemini_event({"usageMetadata": {"promptTokenCount": 3}})) == []
    assert not stream.done and stream.usage is not None


@pytest.mark.parametrize(
    ("code", "status", "expected", "retryable"),
    [
        (503, "UNAVAILABLE", UpstreamUnavailableError, True),
        (500, "INTERNAL", UpstreamUnavailableError, True),
        (429, "RESOURCE_EXHAUSTED", UpstreamRateLimitedError, True),
        (504, "DEADLINE_EXCEEDED", UpstreamTimeoutError, True),
        (400, "INVALID_ARGUMENT", UpstreamRejectedError, False),
    ],
)
def test_stream_error_event_raises(
    code: int, status: str, expected: type[ProviderError], retryable: bool
) -> None:
    stream = new_stream()
    stream.feed(sse_events("stream_text.sse")[0])
    data = {"error": {"code": code, "message": "The model is overloaded.", "status": status}}
    with pytest.raises(ProviderError) as info:
        stream.feed(gemini_event(data))
    assert type(info.value) is expected and info.value.retryable is retryable


def test_stream_rejects_garbage() -> None:
    for data in ("{not json", "[1]"):
        with pytest.raises(UpstreamUnavailableError):
            new_stream().feed(SSEEvent(data))


# --- embeddings --------------------------------------------------------------------------


def embed(inputs: list[Any], **body: Any) -> tuple[str, dict[str, Any]]:
    req = EmbeddingRequest("e", inputs, {"model": "e", "input": inputs, **body})
    sent = provider().embeddings_request(req, deployment("gemini-embedding-001", "embedding"))
    out: dict[str, Any] = jsonutil.loads(sent.body or b"")
    assert sent.headers["x-goog-api-key"] == KEY and "key=" not in sent.url
    return sent.url, out


def test_one_input_uses_embed_content() -> None:
    url, body = embed(["What is the meaning of life?"], dimensions=768, user="u1")
    assert url == f"{BASE}/models/gemini-embedding-001:embedContent"
    assert body == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "What is the meaning of life?"}]},
        "outputDimensionality": 768,
    }
    assert embed_problems(body, "embedContent", "models/gemini-embedding-001") == []


def test_several_inputs_use_batch_embed_contents() -> None:
    url, body = embed(["a", "b"], encoding_format="float")
    assert url == f"{BASE}/models/gemini-embedding-001:batchEmbedContents"
    assert body == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}},
        ]
    }
    assert embed_problems(body, "batchEmbedContents", "models/gemini-embedding-001") == []


def test_token_inputs_are_refused() -> None:
    with pytest.raises(UnsupportedByProviderError) as info:
        embed([[1, 2, 3]])
    assert info.value.param == "input"


def test_embedding_answers_become_an_openai_list_without_usage() -> None:
    d = deployment("gemini-embedding-001", "embedding")
    single = provider().embeddings_response(b'{"embedding": {"values": [0.1, -0.2]}}', d)
    assert single.body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": "gemini-embedding-001",
    }
    assert single.usage is None  # the gateway estimates it and marks it estimated
    batch = provider().embeddings_response(
        b'{"embeddings": [{"values": [1.0]}, {"values": [2.0]}]}', d
    )
    assert [item["embedding"] for item in batch.body["data"]] == [[1.0], [2.0]]
    assert [item["index"] for item in batch.body["data"]] == [0, 1]
    for bad in (b"{}", b'{"embeddings": [{"value": []}]}', b'{"embedding": 3}'):
        with pytest.raises(UpstreamUnavailableError):
            provider().embeddings_response(bad, d)


# --- errors ------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return jsonutil.dumps({"error": error})


KEY_INVALID = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
}
RETRY = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
TOO_LONG = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
ERRORS: dict[str, tuple[int, bytes, type[ProviderError], int]] = {
    "invalid": (
        400,
        google_error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: empty"),
        UpstreamRejectedError,
        400,
    ),
    "too-long": (
        400,
        google_error(400, "INVALID_ARGUMENT", TOO_LONG),
        UpstreamContextLengthError,
        400,
    ),
    "bad-key": (
        400,
        google_error(400, "INVALID_ARGUMENT", "API key not valid.", KEY_INVALID),
        UpstreamAuthError,
        502,
    ),
    "precondition": (
        400,
        google_error(400, "FAILED_PRECONDITION", "User location is not supported."),
        UpstreamAuthError,
        502,
    ),
    "unauthenticated": (401, google_error(401, "UNAUTHENTICATED", "no"), UpstreamAuthError, 502),
    "denied": (403, google_error(403, "PERMISSION_DENIED", "no"), UpstreamAuthError, 502),
    "not-found": (
        404,
        google_error(404, "NOT_FOUND", "models/x is not found"),
        UpstreamUnavailableError,
        502,
    ),
    "exhausted": (
        429,
        google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", RETRY),
        UpstreamRateLimitedError,
        429,
    ),
    "internal": (500, google_error(500, "INTERNAL", "oops"), UpstreamUnavailableError, 502),
    "unavailable": (
        503,
        google_error(503, "UNAVAILABLE", "The model is overloaded."),
        UpstreamUnavailableError,
        502,
    ),
    "deadline": (
        504,
        google_error(504, "DEADLINE_EXCEEDED", "Deadline expired."),
        UpstreamTimeoutError,
        504,
    ),
    "array-wrapped": (
        400,
        b"[" + google_error(400, "INVALID_ARGUMENT", "bad value") + b"]",
        UpstreamRejectedError,
        400,
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_error_mapping(case: str) -> None:
    status, body, expected, client_status = ERRORS[case]
    error = provider().classify_error(status, body, {})
    assert type(error) is expected and error.status == client_status
    assert error.upstream_status == status
    message = str(error.to_openai_body()["error"]["message"])  # type: ignore[index]
    google_message = json.loads(body.strip(b"[]"))["error"]["message"]
    if expected in (UpstreamRejectedError, UpstreamContextLengthError):
        assert error.to_openai_body()["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert google_message in message
    if expected is UpstreamAuthError:
        assert google_message not in message  # what Google says about our key stays in
        assert error.retryable


def test_rate_limit_waits_from_retry_info_unless_a_header_says() -> None:
    body = ERRORS["exhausted"][1]
    assert provider().classify_error(429, body, {}).retry_after_s == 37
    assert provider().classify_error(429, body, {"retry-after": "3"}).retry_after_s == 3
    plain = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
    assert provider().classify_error(429, plain, {}).retry_after_s is None


def test_error_mapping_hides_the_key_and_survives_garbage() -> None:
    error = provider().classify_error(400, google_error(400, "INVALID_ARGUMENT", f"bad {KEY}"), {})
    assert KEY not in error.message and "[redacted]" in error.message
    garbage = provider().classify_error(502, b"<html>bad gateway</html>", {})
    assert isinstance(garbage, UpstreamUnavailableError)
