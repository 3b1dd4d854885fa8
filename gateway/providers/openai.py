"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Together, ...).

Parameters pass through untouched; only `model` is rewritten to the upstream's id
and `stream_options.include_usage` is forced on so usage is always captured (the
usage chunk is then withheld from clients that did not ask for it).

A `/v1/responses` request routed to a deployment with `responses_api: true` goes to its
Responses API instead, with the body the dialect made (`ChatRequest.native`); its answer
is read by gateway.providers.openai_responses.
"""

from __future__ import annotations

from typing import ClassVar

from gateway import jsonutil
from gateway.config import Deployment
from gateway.errors import UpstreamUnavailableError
from gateway.providers.base import BaseProvider, classify_status, now_s, stream_event_json
from gateway.providers.openai_responses import ResponsesStream, from_response, is_response
from gateway.transport import UpstreamRequest
from gateway.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
    SSEEvent,
    Usage,
)


class OpenAIProvider(BaseProvider):
    kind: ClassVar[str] = "openai"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def chat_url(self, d: Deployment) -> str:
        return f"{self.base_url}/chat/completions"

    def embeddings_url(self, d: Deployment) -> str:
        return f"{self.base_url}/embeddings"

    def responses_url(self, d: Deployment) -> str:
        return f"{self.base_url}/responses"

    def chat_request(self, req: ChatRequest, d: Deployment) -> UpstreamRequest:
        if _native_responses(req, d):
            assert req.native is not None
            body = {**req.native.body, "model": d.model, "stream": req.stream}
            return self.upstream_request(self.responses_url(d), self.auth_headers(), body, True)
        body = dict(req.body)
        body["model"] = d.model
        if req.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return self.upstream_request(self.chat_url(d), self.auth_headers(), body)

    def chat_response(self, body: bytes, d: Deployment) -> ChatResponse:
        data = self.parse_json(body)
        if is_response(data):  # the Responses API's answer to a native request
            return from_response(data, now_s(), self.classify_error)
        if not isinstance(data.get("choices"), list):
            raise UpstreamUnavailableError("The upstream returned a body without choices.")
        return ChatResponse(data, Usage.from_openai(data.get("usage")))

    def chat_stream(self, req: ChatRequest, d: Deployment) -> OpenAIStream | ResponsesStream:
        if _native_responses(req, d):
            return ResponsesStream(now_s(), self.classify_error)
        return OpenAIStream(req.include_usage, self)

    def embeddings_request(self, req: EmbeddingRequest, d: Deployment) -> UpstreamRequest:
        body = dict(req.body)
        body["model"] = d.model
        return self.upstream_request(self.embeddings_url(d), self.auth_headers(), body)

    def embeddings_response(self, body: bytes, d: Deployment) -> EmbeddingResponse:
        data = self.parse_json(body)
        if not isinstance(data.get("data"), list):
            raise UpstreamUnavailableError("The upstream returned a body without data.")
        return EmbeddingResponse(data, Usage.from_openai(data.get("usage")))


def _native_responses(req: ChatRequest, d: Deployment) -> bool:
    """A /v1/responses request for a deployment that serves the Responses API itself."""
    return d.responses_api and req.native is not None and req.native.dialect == NATIVE_DIALECT


NATIVE_DIALECT = "responses"  # the client dialect whose body this provider can send as it is


class OpenAIStream:
    """Chunks pass through; the usage chunk is captured and re-emitted only if asked."""

    __slots__ = ("_client_wants_usage", "_provider", "_usage_chunk", "done", "usage")

    def __init__(self, client_wants_usage: bool, provider: BaseProvider) -> None:
        self._client_wants_usage = client_wants_usage
        self._provider = provider
        self._usage_chunk: JSONObject | None = None
        self.usage: Usage | None = None
        self.done = False

    def feed(self, event: SSEEvent) -> list[JSONObject]:
        if event.data == "[DONE]":
            self.done = True
            return []
        chunk = stream_event_json(event)
        if "error" in chunk:
            raise self._in_band_error(chunk)
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage.from_openai(usage)
            if not chunk.get("choices"):
                self._usage_chunk = chunk
                return []
        if not self._client_wants_usage:
            chunk.pop("usage", None)
        return [chunk]

    def usage_chunk(self) -> JSONObject | None:
        return self._usage_chunk

    def _in_band_error(self, chunk: JSONObject) -> UpstreamUnavailableError:
        raw = jsonutil.dumps(chunk)
        error = self._provider.classify_error(500, raw, {})
        return (
            error
            if isinstance(error, UpstreamUnavailableError)
            else UpstreamUnavailableError(error.message)
        )


__all__ = ["OpenAIProvider", "OpenAIStream", "classify_status"]
