"""The client-facing side of a committed stream: relay, account, fail loudly in band.

After the commit point a failure becomes one in-band error event in the client's
dialect (chat: OpenAI's `data: {"error": ...}`) and the stream closes without its end
(chat: `[DONE]`; rule 3): never a clean end, never a synthesized `finish_reason`. Such
a failure (bytes that are not UTF-8, a malformed event, a stall or keep-alive comments
only for `read_s`, the stream reaching `server.stream_timeout_s`) is logged as
`stream_outcome: error` with its error code, and billed for what was produced. A client
disconnect cancels the upstream at once and still bills what was produced, marked
estimated if the final usage never came.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from gateway.config import Deployment
from gateway.context import RequestContext
from gateway.dialects import ChatEncoder, StreamEncoder
from gateway.errors import GatewayError, ProviderError, UpstreamUnavailableError
from gateway.keys import Caller
from gateway.limits import Reservation
from gateway.pipeline.accounting import Accountant
from gateway.pipeline.attempt import SHAPE_ERRORS, OpenedStream, malformed_event
from gateway.routing import FailureRecorder, StatsStore
from gateway.types import ChatRequest, JSONObject, SSEEvent


class ChunkObserver(Protocol):
    def feed(self, chunk: JSONObject) -> None: ...


class ChatStream:
    def __init__(
        self,
        opened: OpenedStream,
        req: ChatRequest,
        d: Deployment,
        caller: Caller,
        reservation: Reservation | None,
        ctx: RequestContext,
        stats: StatsStore,
        failures: FailureRecorder,
        accountant: Accountant,
    ) -> None:
        self._opened = opened
        self._req = req
        self._d = d
        self._caller = caller
        self._reservation = reservation
        self._ctx = ctx
        self._stats = stats
        self._failures = failures
        self._accountant = accountant
        self._completion_chars = 0
        self._observers: tuple[ChunkObserver, ...] = ()
        self._encoder: StreamEncoder = ChatEncoder(req.include_usage)
        self._raw: Callable[[SSEEvent], bytes] | None = None  # a native stream's (body)
        self.completed = False  # the stream ran to its end (a partial one is never stored)

    async def body(self) -> AsyncGenerator[bytes, None]:
        """The held chunks, then each batch of events as it arrives, then the usage chunk
        (if asked for) and `[DONE]`. One async generator for all of it: each one more
        is a layer every piece passes through, and one more the event loop tracks."""
        self._stats.started(self._d.id)
        outcome = "client_disconnect"
        translator = self._opened.translator
        self._raw = self._raw_encoder()
        try:
            if self._opened.held or self._opened.held_events:
                piece, failure = self._relay_held()
                if piece:
                    yield piece
                if failure is not None:
                    raise failure
            if not translator.done:
                async for batch in self._opened.events:
                    piece, failure = self._relay_batch(batch)
                    if piece:
                        yield piece
                    if failure is not None:
                        raise failure
                    if translator.done:
                        break
            if not translator.done:
                raise UpstreamUnavailableError("The upstream stream ended before it was complete.")
            usage_chunk = translator.usage_chunk()
            if usage_chunk is not None:
                self._collect(usage_chunk)
            end = self._encoder.end(usage_chunk)
            if end:  # a native stream's end went out with its last events
                yield end
            outcome = "complete"
        except ProviderError as error:
            outcome = "error"
            yield self._failed(error)
        finally:
            await self._finish(outcome)

    def _failed(self, error: ProviderError) -> bytes:
        """The upstream failed past the commit point: its in-band error event (no
        `[DONE]` follows), counted against the deployment unless it is not its fault."""
        self._ctx.error_code = error.error_code
        self._failures.penalize(self._d, error)
        return self._encoder.error(error)

    def _relay_held(self) -> tuple[bytes, ProviderError | None]:
        """The chunks held back until the commit point, as `_relay_batch`'s (a native
        stream: the events they came from go out as they came)."""
        pieces: list[bytes] = []
        try:
            if self._raw is None:
                for chunk in self._opened.held:
                    pieces.append(self._emit(chunk))
            else:
                for chunk in self._opened.held:
                    self._note(chunk)
                pieces.extend(map(self._raw, self._opened.held_events or ()))
        except SHAPE_ERRORS:  # a chunk of the wrong shape (see attempt.SHAPE_ERRORS)
            return b"".join(pieces), malformed_event()
        return b"".join(pieces), None

    def _relay_batch(self, batch: list[SSEEvent]) -> tuple[bytes, ProviderError | None]:
        """What arrived together, encoded for one write, and the failure it ended with:
        the content before a failing event still goes out. A native stream's events
        still go through the translator (usage, the end, errors, the observers), then
        out as they came."""
        translator, raw = self._opened.translator, self._raw
        pieces: list[bytes] = []
        try:
            for event in batch:
                if raw is None:
                    pieces.extend(map(self._emit, translator.feed(event)))
                else:
                    for chunk in translator.feed(event):
                        self._note(chunk)
                    pieces.append(raw(event))
                if translator.done:
                    break
        except ProviderError as error:
            return b"".join(pieces), error
        except SHAPE_ERRORS:
            return b"".join(pieces), malformed_event()
        return b"".join(pieces), None

    def _raw_encoder(self) -> Callable[[SSEEvent], bytes] | None:
        """A native stream (the upstream answers in the client's dialect) whose encoder
        takes the upstream's events as they came (`raw`); None: the chunks are encoded."""
        if self._opened.held_events is None:
            return None
        raw: Callable[[SSEEvent], bytes] | None = getattr(self._encoder, "raw", None)
        return raw

    def _note(self, chunk: JSONObject) -> None:
        """A chunk the client is sent (or, on a native stream, whose event it is sent):
        its text counted, the observers fed."""
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                self._completion_chars += len(content)
        self._collect(chunk)

    def _emit(self, chunk: JSONObject) -> bytes:
        self._note(chunk)
        return self._encoder.chunk(chunk)

    def encode_with(self, encoder: StreamEncoder) -> None:
        """The client's dialect (before `body`): its events for every chunk, the end and
        an in-band error (default: chat's). For a native stream (the upstream was sent
        the client's own body), an encoder with `raw(event) -> bytes` is handed the
        upstream's events instead of the chunks, and its `end` adds what the upstream's
        own end did not (nothing, for the Messages dialect)."""
        self._encoder = encoder

    def observe(self, observer: ChunkObserver) -> None:
        """`observer` is fed every chunk the client is sent (the cache assembles the
        answer it stores from them, the request log the answer it keeps)."""
        self._observers = (*self._observers, observer)

    def _collect(self, chunk: JSONObject) -> None:
        for observer in self._observers:
            observer.feed(chunk)

    async def _finish(self, outcome: str) -> None:
        ctx = self._ctx
        ctx.stream_outcome = outcome
        # A cancelled (disconnected) request must still close and bill. The body runs in
        # the request's own task (gateway.api.sse_response), where a cancel arrives once, at the
        # await it interrupted, so these awaits run to the end. (Under Starlette's
        # StreamingResponse, an anyio task group re-cancelled every await: it needed an
        # anyio shield.)
        await self._close_and_settle(outcome)

    async def _close_and_settle(self, outcome: str) -> None:
        ctx, d = self._ctx, self._d
        try:
            await self._opened.aclose()
        finally:
            self._stats.ended(d.id)
            usage = self._accountant.usage_or_estimate(
                self._opened.translator.usage, self._req.prompt_chars(), self._completion_chars
            )
            total_s = time.perf_counter() - ctx.started
            ctx.upstream_s = total_s
            if outcome == "complete":
                self.completed = True
                self._stats.success(d.id, ctx.ttft_s or total_s, usage.completion_tokens, total_s)
            try:
                await self._accountant.settle(ctx, self._caller, d, usage, self._reservation)
            except GatewayError:
                pass  # a budget settle failure after the fact cannot reach the client
