"""A streamed response that costs at most one watcher task per stream, nothing per chunk.

Starlette's `StreamingResponse` (under uvicorn's ASGI 2.3) runs each stream in an
anyio task group beside a disconnect listener: two tasks, a cancel scope and their
bookkeeping per stream. Here the body is relayed in the request's own task, and one
watcher task, started `WATCH_AFTER_S` into the stream as for any request (a stream
over sooner never pays for it), cancels the body if the client leaves (rule 6: the
upstream is cancelled at once, and the body's own `finally` still closes and bills
it). Each piece the body yields is one `send`: the body decides what goes out together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.disconnect import WATCH_AFTER_S, DisconnectWatch
from gateway.api.http_protocol import Header

# What every event stream's answer carries besides the gateway's own headers: no
# caching, and no buffering by a proxy in front (nginx honours x-accel-buffering).
SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"
SSE_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[bytes, None], headers: list[Header]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", SSE_CONTENT_TYPE), *SSE_HEADERS, *headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = DisconnectWatch(receive)
        watch.start(after_s=WATCH_AFTER_S)
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            if not watch.is_ours():
                raise  # not (only) ours: a shutdown's cancel goes on
            # The client left. If the cancel landed between two pieces, the body has not
            # seen it: closing it runs its `finally` (upstream closed, usage billed).
            await self.body_iterator.aclose()
        finally:
            watch.stop()

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for piece in self.body_iterator:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
