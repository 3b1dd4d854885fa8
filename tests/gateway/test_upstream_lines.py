"""AiohttpStream.lines over a real HTTP server: the same lines however the bytes arrive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gateway.errors import UpstreamUnavailableError
from gateway.upstream import MAX_LINE_BYTES, AiohttpUpstream, UpstreamRequest

Writer = Callable[[web.StreamResponse], Awaitable[None]]


async def _lines_from(write: Writer) -> list[bytes]:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await write(response)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/stream", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream = AiohttpUpstream()
    try:
        request = UpstreamRequest(f"http://127.0.0.1:{port}/stream", {}, b"{}")
        async with upstream.stream(request) as stream:
            return [line async for batch in stream.line_batches() for line in batch]
    finally:
        await upstream.aclose()
        await runner.cleanup()


def _pieces(*pieces: bytes) -> Writer:
    async def write(response: web.StreamResponse) -> None:
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.002)  # separate reads on the client, most of the time

    return write


def test_lines_split_across_reads_keep_their_terminators() -> None:
    pieces = (b'data: {"a"', b": 1}\r", b"\n\r\ndata: b\n\nda", b"ta: [DONE]\n", b"\ntail")
    lines = asyncio.run(_lines_from(_pieces(*pieces)))
    assert lines == [
        b'data: {"a": 1}\r\n',
        b"\r\n",
        b"data: b\n",
        b"\n",
        b"data: [DONE]\n",
        b"\n",
        b"tail",  # the end of the body without a newline is still a line
    ]


def test_a_long_line_over_many_reads_arrives_whole() -> None:
    line = b"data: " + b"x" * (1024 * 1024) + b"\n"
    pieces = [line[i : i + 65536] for i in range(0, len(line), 65536)]
    assert asyncio.run(_lines_from(_pieces(*pieces, b"\n"))) == [line, b"\n"]


def test_an_endless_line_is_an_upstream_error_not_unbounded_memory() -> None:
    async def endless(response: web.StreamResponse) -> None:
        block = b"y" * (1024 * 1024)
        for _ in range(MAX_LINE_BYTES // len(block) + 2):
            await response.write(block)

    with pytest.raises(UpstreamUnavailableError, match="over-long"):
        asyncio.run(_lines_from(endless))
