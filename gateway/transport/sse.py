"""Server-sent events from upstreams: an incremental decoder, and its events in batches.

An upstream's bad bytes are the upstream's fault: a line that is not UTF-8 is an
`UpstreamUnavailableError` (before the commit point the stream falls over; after it, the
relay ends it with an in-band error), never an exception nobody maps.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

from gateway.errors import (
    ProviderError,
    StreamTimeoutError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.types import SSEEvent

# What `SSEDecoder.feed_line` returns for a line that is not UTF-8 (its `error` says so).
# Its empty data is no valid event either: a consumer that ignores `error` still fails.
INVALID = SSEEvent("", "invalid")

_now = time.perf_counter  # the clock of RequestContext.started


class SSEDecoder:
    """Incremental SSE parser over lines (WHATWG event-stream rules, minus `id`/`retry`)."""

    __slots__ = ("_data", "_event", "error")

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self.error: ProviderError | None = None  # set by a line that is not UTF-8

    def feed_line(self, raw: bytes) -> SSEEvent | None:
        """The event this line completes, if any. A line that is not UTF-8 returns
        `INVALID` and sets `error`: nothing decoded after it is the upstream's stream."""
        try:  # no cost unless raised (3.11's zero-cost exceptions)
            if raw[:6] == b"data: ":  # nearly every line: checked first, decoded alone
                self._data.append(raw[6:].rstrip(b"\r\n").decode("utf-8"))
                return None
            line = raw.rstrip(b"\r\n")
            if not line:
                return self._dispatch()
            if line[:1] == b":":
                return None  # comment / keep-alive
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value.decode("utf-8"))
            elif name == b"event":
                self._event = value.decode("utf-8")
            return None
        except UnicodeDecodeError:
            self.error = UpstreamUnavailableError("The upstream sent bytes that are not UTF-8.")
            self._data = []
            self._event = None
            return INVALID

    def flush(self) -> SSEEvent | None:
        return self._dispatch()

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = None
            return None
        event = SSEEvent("\n".join(self._data), self._event)
        self._data = []
        self._event = None
        return event


class EventBatches:
    """The events completed by each batch of lines (empty batches are skipped). An
    iterator class rather than an async generator, which the event loop hooks and
    tracks (a weak set entry and a finalizer per stream).

    Two deadlines, checked in this loop (no timer, no timeout context per batch: one
    clock read per batch): `idle_s`, the provider's `read_s`, bounds the wait for the
    next event, however many lines without one (`: keep-alive` comments) arrive
    meanwhile (the transport's own `read_s` timer bounds a silent gap: any byte resets
    it); `deadline` (on `time.perf_counter()`, `server.stream_timeout_s` after the
    request started) ends a stream still running at that age. Each fails as a provider
    error, as does a line that is not UTF-8; the events before such a line in its batch
    are still returned, and the failure is raised by the next call (`failure` tells it
    before then).
    """

    __slots__ = ("_lines", "_decoder", "_ended", "_idle_s", "_deadline", "failure")

    def __init__(
        self,
        line_batches: AsyncIterator[list[bytes]],
        idle_s: float = math.inf,
        deadline: float = math.inf,
    ) -> None:
        self._lines = line_batches
        self._decoder = SSEDecoder()
        self._ended = False
        self._idle_s = idle_s
        self._deadline = deadline
        self.failure: ProviderError | None = None  # raised by the next call

    def __aiter__(self) -> EventBatches:
        return self

    async def __anext__(self) -> list[SSEEvent]:
        # From when the consumer asks: its own time (a slow client) is not the upstream's.
        waiting_since = _now()
        if waiting_since > self._deadline and self.failure is None:  # (else: raised below)
            raise StreamTimeoutError()
        decoder = self._decoder
        while not self._ended:
            try:
                lines = await self._lines.__anext__()
            except StopAsyncIteration:
                self._ended = True
                last = decoder.flush()
                if last is not None:
                    return [last]
                break
            events = [e for e in map(decoder.feed_line, lines) if e is not None]
            if decoder.error is not None:
                return self._before_invalid(events, decoder.error)
            if events:
                return events
            if _now() - waiting_since > self._idle_s:  # lines, but no event: still idle
                raise UpstreamTimeoutError(
                    f"The upstream sent no stream event for {self._idle_s:g} s "
                    "(keep-alive comments only)."
                )
        if self.failure is not None:  # ended by a line that was not UTF-8
            raise self.failure
        raise StopAsyncIteration

    def _before_invalid(self, events: list[SSEEvent], error: ProviderError) -> list[SSEEvent]:
        self.failure = error
        self._ended = True
        good = events[: events.index(INVALID)]
        if not good:
            raise error
        return good
