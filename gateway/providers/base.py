"""What every provider adapter is, and the error classification they share.

An adapter does no I/O: it builds an `UpstreamRequest`, and turns the bytes or SSE
events that come back into OpenAI-shaped values. The pipeline does the sending, so
every adapter is a pure, table-testable translation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar, Protocol

from gateway import jsonutil
from gateway.config import Deployment, ProviderConfig, preset
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
from gateway.transport import Timeouts, UpstreamRequest
from gateway.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
    SSEEvent,
    Usage,
)

_CONTEXT_HINTS = (
    "context_length",
    "context length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "input is too long",
    "exceeds the maximum",
)


class StreamTranslator(Protocol):
    """Per-stream state; turns provider SSE events into OpenAI chunks."""

    usage: Usage | None
    done: bool  # the provider's terminal event arrived (a clean end)

    def feed(self, event: SSEEvent) -> list[JSONObject]: ...

    def usage_chunk(self) -> JSONObject | None: ...


class Provider(Protocol):
    kind: ClassVar[str]
    name: str

    def chat_request(self, req: ChatRequest, d: Deployment) -> UpstreamRequest: ...

    def chat_response(self, body: bytes, d: Deployment) -> ChatResponse: ...

    def chat_stream(self, req: ChatRequest, d: Deployment) -> StreamTranslator: ...

    def embeddings_request(self, req: EmbeddingRequest, d: Deployment) -> UpstreamRequest: ...

    def embeddings_response(self, body: bytes, d: Deployment) -> EmbeddingResponse: ...

    def classify_error(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> ProviderError: ...


class BaseProvider:
    """Shared plumbing: base URL, key, headers, timeouts, error classification."""

    kind: ClassVar[str] = "openai"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        base_url = config.base_url or preset(config.kind).base_url or ""
        self.base_url = base_url.rstrip("/")
        self.api_key = config.api_key or ""
        self.timeouts = Timeouts(
            config.timeouts.connect_s, config.timeouts.read_s, config.timeouts.total_s
        )
        self.proxy = config.proxy  # None: the environment's (the transport holds them)

    def upstream_request(
        self, url: str, headers: dict[str, str], body: object, native: bool = False
    ) -> UpstreamRequest:
        merged = {"content-type": "application/json", **self.config.headers, **headers}
        return UpstreamRequest(
            url,
            merged,
            jsonutil.dumps(body),
            timeouts=self.timeouts,
            proxy=self.proxy,
            native=native,
        )

    def parse_json(self, body: bytes) -> JSONObject:
        try:
            data = jsonutil.loads(body)
        except jsonutil.JSONDecodeError:
            raise UpstreamUnavailableError("The upstream returned invalid JSON.") from None
        if not isinstance(data, dict):
            raise UpstreamUnavailableError("The upstream returned an unexpected body.")
        return data

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        # Every field is relayed (type, param and code too) and the code is logged: a
        # provider that echoes our key may put it in any of them.
        message, error_type, param, code = self.error_fields(body)
        return classify_status(
            status,
            self.redact(message),
            headers,
            self.redact(error_type),
            None if param is None else self.redact(param),
            None if code is None else self.redact(code),
        )

    def error_fields(self, body: bytes) -> tuple[str, str, str | None, str | None]:
        """(message, type, param, code) from an OpenAI-style error body."""
        error = error_object(body)
        code = error.get("code")
        return (
            str(error.get("message") or ""),
            str(error.get("type") or "invalid_request_error"),
            error.get("param") if isinstance(error.get("param"), str) else None,
            str(code) if code is not None else None,
        )

    def redact(self, text: str) -> str:
        """Provider keys never leave the gateway, even inside an upstream's message."""
        if self.api_key and self.api_key in text:
            text = text.replace(self.api_key, "[redacted]")
        return text


def classify_status(
    status: int,
    message: str,
    headers: Mapping[str, str],
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> ProviderError:
    detail = f"Upstream returned HTTP {status}" + (f": {message}" if message else ".")
    if status < 400:
        # A redirect (never followed, rule 10) or another non-answer: the upstream's fault,
        # not the request's; never relayed as a 3xx the client's HTTP library would follow.
        return UpstreamUnavailableError(
            f"Upstream returned HTTP {status} instead of an answer.", upstream_status=status
        )
    if status in (401, 403):
        # Our provider key was refused: not the client's fault (rule 5), no upstream text.
        return UpstreamAuthError(
            f"Upstream refused the gateway's credentials (HTTP {status}).", upstream_status=status
        )
    if status == 429:
        return UpstreamRateLimitedError(
            detail, upstream_status=status, retry_after_s=retry_after_s(headers)
        )
    if status in (404, 408) or status >= 500:
        cls = UpstreamTimeoutError if status in (408, 504) else UpstreamUnavailableError
        return cls(detail, upstream_status=status, retry_after_s=retry_after_s(headers))
    if _is_context_length(message, code):
        return UpstreamContextLengthError(detail, upstream_status=status)
    return UpstreamRejectedError(
        message or detail, upstream_status=status, error_type=error_type, param=param, code=code
    )


def _is_context_length(message: str, code: str | None) -> bool:
    if code == "context_length_exceeded":
        return True
    lowered = message.lower()
    return any(hint in lowered for hint in _CONTEXT_HINTS)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: treat as unknown rather than parse clocks
    return None


def error_object(body: bytes) -> JSONObject:
    """The `error` object of an error body, {} when there is none.

    Google wraps it in a one-element array; OpenAI and Anthropic do not.
    """
    try:
        data = jsonutil.loads(body)
    except jsonutil.JSONDecodeError:
        return {}
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def stream_event_json(event: SSEEvent) -> JSONObject:
    """One SSE event's JSON object; anything else is the upstream's failure."""
    try:
        data = jsonutil.loads(event.data)
    except jsonutil.JSONDecodeError:
        raise UpstreamUnavailableError("The upstream sent an invalid stream event.") from None
    if not isinstance(data, dict):
        raise UpstreamUnavailableError("The upstream sent an invalid stream event.")
    return data


def tool_call_arguments(call: object, where: str) -> tuple[JSONObject, JSONObject, JSONObject]:
    """(call, function, parsed arguments) of an OpenAI assistant tool call, or a 400."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(fn, dict) or not call.get("id"):
        raise InvalidRequestError(f"{where} must have an id and a function.", param=where)
    raw = fn.get("arguments") or "{}"
    try:
        arguments = jsonutil.loads(raw) if isinstance(raw, str) else raw
    except jsonutil.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        here = f"{where}.function.arguments"
        raise InvalidRequestError(f"{here} must be a JSON object.", param=here)
    return call, fn, arguments


def now_s() -> int:
    return int(time.time())
