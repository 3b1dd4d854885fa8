"""Server-sent events from upstreams: an incremental decoder, and its events in batches."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.types import SSEEvent


class SSEDecoder:
    """Incremental SSE parser over lines (WHATWG event-stream rules, minus `id`/`retry`)."""

    __slots__ = ("_data", "_event")

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None

    def feed_line(self, raw: bytes) -> SSEEvent | None:
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
    tracks (a weak set entry and a finalizer per stream)."""

    __slots__ = ("_lines", "_decoder", "_ended")

    def __init__(self, line_batches: AsyncIterator[list[bytes]]) -> None:
        self._lines = line_batches
        self._decoder = SSEDecoder()
        self._ended = False

    def __aiter__(self) -> EventBatches:
        return self

    async def __anext__(self) -> list[SSEEvent]:
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
            if events:
                return events
        raise StopAsyncIteration
