"""Stream line batches over a real HTTP server: the same lines however the bytes arrive,
with every upstream transport."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gateway.errors import UpstreamUnavailableError
from gateway.transport.base import MAX_LINE_BYTES, LineSplitter, UpstreamRequest
from gateway.transport.dispatch import http_upstream
from tests.gateway.upstream_server import TRANSPORTS, serving, transport_name

Writer = Callable[[web.StreamResponse], Awaitable[None]]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return transport_name(request)


async def _lines_from(write: Writer, transport: str) -> list[bytes]:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await write(response)
        await response.write_eof()
        return response

    async with serving("/stream", handler) as port:
        upstream = http_upstream(transport)
        try:
            request = UpstreamRequest(f"http://127.0.0.1:{port}/stream", {}, b"{}")
            async with upstream.stream(request) as stream:
                return [line async for batch in stream.line_batches() for line in batch]
        finally:
            await upstream.aclose()


def _pieces(*pieces: bytes) -> Writer:
    async def write(response: web.StreamResponse) -> None:
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.002)  # separate reads on the client, most of the time

    return write


def test_lines_split_across_reads_keep_their_terminators(transport: str) -> None:
    pieces = (b'data: {"a"', b": 1}\r", b"\n\r\ndata: b\n\nda", b"ta: [DONE]\n", b"\ntail")
    lines = asyncio.run(_lines_from(_pieces(*pieces), transport))
    assert lines == [
        b'data: {"a": 1}\r\n',
        b"\r\n",
        b"data: b\n",
        b"\n",
        b"data: [DONE]\n",
        b"\n",
        b"tail",  # the end of the body without a newline is still a line
    ]


def test_a_long_line_over_many_reads_arrives_whole(transport: str) -> None:
    line = b"data: " + b"x" * (1024 * 1024) + b"\n"
    pieces = [line[i : i + 65536] for i in range(0, len(line), 65536)]
    assert asyncio.run(_lines_from(_pieces(*pieces, b"\n"), transport)) == [line, b"\n"]


def test_an_endless_line_is_an_upstream_error_not_unbounded_memory(transport: str) -> None:
    async def endless(response: web.StreamResponse) -> None:
        block = b"y" * (1024 * 1024)
        for _ in range(MAX_LINE_BYTES // len(block) + 2):
            await response.write(block)

    with pytest.raises(UpstreamUnavailableError, match="over-long"):
        asyncio.run(_lines_from(endless, transport))


# --- LineSplitter alone: what every transport's line_batches is built on ------------------


def test_splitter_returns_only_complete_lines_and_keeps_the_rest() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"data: a") == []
    assert splitter.feed(b"bc\n\ndata: d") == [b"data: abc\n", b"\n"]
    assert splitter.feed(b"\r\n") == [b"data: d\r\n"]
    assert splitter.feed(b"tail") == []
    assert splitter.rest() == b"tail"
    assert splitter.rest() == b""  # taken once


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_splitter_gives_the_same_lines_however_the_bytes_are_cut(size: int) -> None:
    data = b'data: {"x": 1}\n\ndata: [DONE]\n\n: comment\nlast'
    splitter = LineSplitter()
    lines = [line for i in range(0, len(data), size) for line in splitter.feed(data[i : i + size])]
    assert [*lines, splitter.rest()] == data.splitlines(keepends=True)


def test_splitter_bounds_an_unfinished_line_not_a_long_stream() -> None:
    splitter = LineSplitter()
    block = b"z" * (1024 * 1024)
    for _ in range(MAX_LINE_BYTES // len(block)):  # exactly at the bound: still fine
        assert splitter.feed(block) == []
    assert splitter.feed(b"\n") == [block * (MAX_LINE_BYTES // len(block)) + b"\n"]
    for _ in range(MAX_LINE_BYTES // len(block)):  # the count restarts with each line
        splitter.feed(block)
    with pytest.raises(UpstreamUnavailableError, match="over-long"):
        splitter.feed(b"z")
