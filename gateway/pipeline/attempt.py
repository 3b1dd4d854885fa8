"""One upstream attempt: build, send, parse. For streams, peek until the commit point.

A stream attempt returns only once the first chunk with real content (text, a tool
call or a finish reason) has arrived and parsed, holding back the role-only preamble
(rule 2). Until then every failure is an ordinary attempt error the pipeline can
fail over from; after it, the stream belongs to the client.

An upstream's bad bytes are its fault: bytes that are not UTF-8 (the SSE decoder), JSON
that does not parse (the translators) and an event of the wrong shape (`SHAPE_ERRORS`
from a translator, or from reading its chunks) are each an `UpstreamUnavailableError`.
"""

from __future__ import annotations

import math
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
    request = provider.chat_request(req, d)
    response = await upstream.send(request, within_s)
    if response.status != 200:
        raise provider.classify_error(response.status, response.body, response.headers)
    try:
        answer = provider.chat_response(response.body, d)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError):
        raise _malformed() from None  # valid JSON of the wrong shape: the upstream's fault
    if not _well_formed_answer(answer.body):
        raise _malformed()
    if request.native:  # the client's own format: its answer goes out as it came
        answer.native = response.body
    return answer


def _well_formed_answer(body: JSONObject) -> bool:
    """What the gateway reads of a completion has the shape OpenAI's API gives it."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not isinstance(body.get("usage") or {}, dict):
        return False
    return all(isinstance(c, dict) and isinstance(c.get("message") or {}, dict) for c in choices)


def _malformed() -> UpstreamUnavailableError:
    return UpstreamUnavailableError("The upstream returned a malformed answer.")


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
    # A native stream (UpstreamRequest.native): the events held with `held`, which the
    # client is sent as they came; None otherwise.
    held_events: list[SSEEvent] | None = None

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
    upstream: Upstream,
    provider: Provider,
    req: ChatRequest,
    d: Deployment,
    deadline: float = math.inf,
) -> OpenedStream:
    """`deadline`: when the whole stream must end (`time.perf_counter()`; see EventBatches)."""
    request = provider.chat_request(req, d)
    context = upstream.stream(request)
    stream = await context.__aenter__()
    try:
        if stream.status != 200:
            body = await stream.read_all()
            raise provider.classify_error(stream.status, body, stream.headers)
        translator = provider.chat_stream(req, d)
        events = EventBatches(stream.line_batches(), request.timeouts.read_s, deadline)
        held_events: list[SSEEvent] | None = [] if request.native else None
        held = await _peek(events, translator, held_events)
        return OpenedStream(held, events, translator, context, time.perf_counter(), held_events)
    except BaseException:
        await context.__aexit__(None, None, None)
        raise


# What a translator, or reading its chunks, raises on an event of the wrong shape (valid
# JSON, but e.g. `"choices": 5`): the upstream's protocol error, never a 500.
SHAPE_ERRORS: tuple[type[Exception], ...] = (AttributeError, TypeError, KeyError, IndexError)


def malformed_event() -> UpstreamUnavailableError:
    return UpstreamUnavailableError("The upstream sent a malformed stream event.")


async def _peek(
    events: EventBatches, translator: StreamTranslator, held_events: list[SSEEvent] | None
) -> list[JSONObject]:
    """Held chunks up to the first content (or the end), and whatever arrived with it
    (and into `held_events`, when given, the events they came from). Nothing was sent
    yet: a failure in the same read, or a held chunk of the wrong shape, still falls
    over."""
    held: list[JSONObject] = []
    async for batch in events:
        try:
            for event in batch:
                held.extend(translator.feed(event))
                if held_events is not None:
                    held_events.append(event)
                if translator.done:
                    break
            ready = translator.done or any(is_content(c) for c in held)
        except SHAPE_ERRORS as exc:
            raise malformed_event() from exc
        if ready:
            if events.failure is not None and not translator.done:
                raise events.failure
            if not all(map(_well_formed, held)):
                raise malformed_event()
            return held
    raise UpstreamUnavailableError("The upstream closed the stream before sending any content.")


def _well_formed(chunk: JSONObject) -> bool:
    """Choices a client (and the relay) can read: a list of objects with object deltas."""
    choices = chunk.get("choices") or []
    return isinstance(choices, list) and all(
        isinstance(choice, dict) and isinstance(choice.get("delta") or {}, dict)
        for choice in choices
    )
