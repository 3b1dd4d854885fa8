"""The request-context middleware records what the client actually received."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from gateway.api.middleware import RequestContextMiddleware


async def _broken_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("bug")


async def _ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _call(app: Any) -> tuple[Scope, list[Message]]:
    scope: Scope = {"type": "http", "path": "/v1/chat/completions", "headers": []}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await RequestContextMiddleware(app)(scope, receive, send)

    try:
        asyncio.run(run())
    except RuntimeError:
        pass
    return scope, sent


def test_an_unhandled_error_is_recorded_as_500_not_200() -> None:
    scope, sent = _call(_broken_app)
    ctx = scope["state"]["ctx"]
    assert sent == []  # the outermost error handler answers, past this middleware
    assert (ctx.status, ctx.error_code) == (500, "internal_error")


def test_the_sent_status_and_request_id_are_recorded() -> None:
    scope, sent = _call(_ok_app)
    ctx = scope["state"]["ctx"]
    assert ctx.status == 201
    assert (b"x-request-id", ctx.request_id.encode()) in sent[0]["headers"]
