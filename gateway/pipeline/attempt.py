"""One upstream attempt: build, send, parse. For streams, peek until the commit point.

A stream attempt returns only once the first chunk with real content (text, a tool
call or a finish reason) has arrived and parsed, holding back the role-only preamble
(rule 2). Until then every failure is an ordinary attempt error the pipeline can
fail over from; after it, the stream belongs to the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from gateway.config import Deployment
from gateway.errors import UpstreamUnavailableError
from gateway.providers import Provider, StreamTranslator
from gateway.transport import EventBatches, Upstream, UpstreamStream
from gateway.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
    SSEEvent,
)


async def chat_once(
    upstream: Upstream, req: ChatRequest, d: Deployment, provider: Provider, within_s: float
) -> ChatResponse:
    """`within_s`: what is left of the request's deadline; the transport enforces it."""
    response = await upstream.send(provider.chat_request(req, d), within_s)
    if response.status != 200:
        raise provider.classify_error(response.status, response.body, response.headers)
    return provider.chat_response(response.body, d)


async def embeddings_once(
    upstream: Upstream,
    req: EmbeddingRequest,
    d: Deployment,
    provider: Provider,
    within_s: float,
) -> EmbeddingResponse:
    response = await upstream.send(provider.embeddings_request(req, d), within_s)
    if response.status != 200:
        raise provider.classify_error(response.status, response.body, response.headers)
    return provider.embeddings_response(response.body, d)


@dataclass(slots=True)
class OpenedStream:
    """A stream past its commit point: held chunks first, then the rest of the events
    (in batches: the events that arrived together)."""

    held: list[JSONObject]
    events: AsyncIterator[list[SSEEvent]]
    translator: StreamTranslator
    context: AbstractAsyncContextManager[UpstreamStream]
    first_content_at: float

    async def aclose(self) -> None:
        await self.context.__aexit__(None, None, None)


def is_content(chunk: JSONObject) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
        if choice.get("finish_reason") or delta.get("function_call"):
            return True
    return False


async def open_stream(
    upstream: Upstream, provider: Provider, req: ChatRequest, d: Deployment
) -> OpenedStream:
    context = upstream.stream(provider.chat_request(req, d))
    stream = await context.__aenter__()
    try:
        if stream.status != 200:
            body = await stream.read_all()
            raise provider.classify_error(stream.status, body, stream.headers)
        translator = provider.chat_stream(req, d)
        events = EventBatches(stream.line_batches())
        held = await _peek(events, translator)
        return OpenedStream(held, events, translator, context, time.perf_counter())
    except BaseException:
        await context.__aexit__(None, None, None)
        raise


async def _peek(
    events: AsyncIterator[list[SSEEvent]], translator: StreamTranslator
) -> list[JSONObject]:
    """Held chunks up to the first content, and whatever arrived with it."""
    held: list[JSONObject] = []
    async for batch in events:
        for event in batch:
            held.extend(translator.feed(event))
            if translator.done:
                return held
        if any(is_content(c) for c in held):
            return held
    raise UpstreamUnavailableError("The upstream closed the stream before sending any content.")
