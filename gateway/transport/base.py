"""The upstream transport seam: adapters build `UpstreamRequest`s, a transport sends them.

This module imports no HTTP library. The native client (`native.py`) runs the hot path
by default; httpx (`httpx.py`) is the supported fallback, and aiohttp (`aiohttp.py`)
stays selectable to measure against (`server.upstream_transport`, picked in
`dispatch.py`). Each transport maps its own exceptions to an `UpstreamTimeoutError` or
`UpstreamUnavailableError` (with `errors.mapped`), including during stream iteration, so
nothing above the transports knows which HTTP library is in use. Redirects are never
followed (rule 10).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import UpstreamUnavailableError
from gateway.transport.errors import mapped

MAX_LINE_BYTES = 8 * 1024 * 1024  # one stream line (an SSE field); a bound, not a real size


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0  # also the first-byte and idle timeout of a stream
    total_s: float = 600.0  # whole non-streaming call


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Already provider-shaped. `headers` hold the provider key: never log them.

    `proxy`: the provider's `proxy:` setting, an http:// URL or "none"; None for the
    environment's proxies (which the transport holds: it decides once per origin).

    `native`: the body is the client's own (ChatRequest.native), so the answer is in the
    client's dialect already and goes to it as it comes."""

    url: str
    headers: Mapping[str, str]
    body: bytes | None
    method: str = "POST"
    timeouts: Timeouts = field(default_factory=Timeouts)
    proxy: str | None = None
    native: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamStream(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read_all(self) -> bytes: ...

    def line_batches(self) -> AsyncIterator[list[bytes]]:
        """Complete lines (with their `\n`), grouped as they arrived: one list per read."""
        ...


class Upstream(Protocol):
    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        """The whole answer. `within_s`: the caller's own deadline (the request's, in
        seconds from now), connecting included; past it, `UpstreamTimeoutError`. The
        transport's timers enforce it: no timeout context per call on the hot path."""
        ...

    def stream(self, req: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamStream]: ...

    async def aclose(self) -> None: ...


class LineBatches:
    """The lines completed by each `read()` (b"" at the end), grouped as they came; a
    line split over many reads is joined once, when it ends, so a long line costs
    linear time. `errors` from `read` become provider errors.

    An iterator class, not an async generator: the event loop hooks and tracks every
    async generator (a weak set entry, a finalizer), a cost per stream."""

    __slots__ = ("_read", "_errors", "_splitter", "_ended")

    def __init__(
        self, read: Callable[[], Awaitable[bytes]], errors: tuple[type[BaseException], ...]
    ) -> None:
        self._read = read
        self._errors = errors
        self._splitter = LineSplitter()
        self._ended = False

    def __aiter__(self) -> LineBatches:
        return self

    async def __anext__(self) -> list[bytes]:
        while not self._ended:
            try:  # not a context manager: one per read is a per-chunk cost
                data = await self._read()
            except self._errors as exc:
                raise mapped(exc) from None
            if not data:
                self._ended = True
                rest = self._splitter.rest()
                if rest:
                    return [rest]
                break
            lines = self._splitter.feed(data)
            if lines:
                return lines
        raise StopAsyncIteration


class LineSplitter:
    """Complete lines (with their `\n`) out of bytes fed as they arrive; pure, no I/O.

    A line split over many feeds is joined once, when it ends, so a long line costs
    linear time; an unfinished line over MAX_LINE_BYTES is an upstream error.
    """

    __slots__ = ("_partial", "_partial_bytes")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the start of a line whose end has not arrived
        self._partial_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes, in order; empty if it completes none."""
        lines: list[bytes] = []
        if b"\n" in data:
            if self._partial:
                data = b"".join((*self._partial, data))
                self._partial.clear()
            *complete, data = data.split(b"\n")
            lines = [line + b"\n" for line in complete]
            self._partial_bytes = 0
        if data:
            self._partial.append(data)
            self._partial_bytes += len(data)
            if self._partial_bytes > MAX_LINE_BYTES:
                raise UpstreamUnavailableError("The upstream sent an over-long stream line.")
        return lines

    def rest(self) -> bytes:
        """What follows the last `\n` (at the end of the body: a line without one)."""
        rest = b"".join(self._partial)
        self._partial.clear()
        self._partial_bytes = 0
        return rest
