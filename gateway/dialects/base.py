"""What a client-facing wire format (a dialect) provides to the endpoints.

Every dialect is parsed into the internal request (an OpenAI chat body: `ChatRequest`),
which routing, fallback, the providers, the cache, limits and accounting share; its
answers are the internal `chat.completion` and its chunks, which the dialect encodes
back into its own wire format on the way out (and for a cached answer, from the stored
completion). Errors, before the commit point and in band after it, are the dialect's
shape too.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.config import RequestLimits
from gateway.errors import GatewayError
from gateway.types import ChatRequest, JSONObject


class StreamEncoder(Protocol):
    """One stream's events in a dialect, fed the internal chunks as they come. Stateful:
    one per stream."""

    def chunk(self, chunk: JSONObject) -> bytes:
        """An internal `chat.completion.chunk` -> the bytes of its events (maybe none)."""
        ...

    def end(self, usage_chunk: JSONObject | None) -> bytes:
        """The stream completed: its closing events (`usage_chunk`: the upstream's final
        usage, as an internal chunk with no choices, if any came)."""
        ...

    def error(self, error: GatewayError) -> bytes:
        """The upstream failed past the commit point: the in-band error event; nothing
        follows it (the stream is not complete)."""
        ...


class Dialect(Protocol):
    @property
    def name(self) -> str:
        """The endpoint label (metrics, access log, request log) and the cache key's tag."""
        ...

    def parse(self, raw: bytes, limits: RequestLimits) -> ChatRequest:
        """The request body -> the internal request; InvalidRequestError (400) naming the
        param otherwise."""
        ...

    def answer(self, completion: JSONObject, req: ChatRequest) -> bytes:
        """An internal `chat.completion` -> this dialect's response body."""
        ...

    def stream(self, req: ChatRequest) -> StreamEncoder:
        """A new encoder for one streamed answer to `req`."""
        ...

    def error_body(self, error: GatewayError) -> JSONObject:
        """The body of an error response in this dialect's shape (status and headers are
        the error's own)."""
        ...


@runtime_checkable
class NativeAnswers(Protocol):
    """A dialect whose native answers (an upstream sent the client's own body:
    `ChatRequest.native`) are not sent quite as they came: the Responses dialect gives
    the upstream's Response its own id. Without it, they go out unchanged."""

    def native_answer(self, body: bytes) -> bytes: ...
