"""A one-route aiohttp server and the list of upstream transports, shared by the
upstream transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

TRANSPORTS = ["native", "aiohttp", "httpx", "httpx-aiohttp"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def transport_name(request: pytest.FixtureRequest) -> str:
    """For a fixture parametrized over TRANSPORTS: skips httpx-aiohttp when not installed."""
    name: str = request.param
    if name == "httpx-aiohttp":
        pytest.importorskip("httpx_aiohttp")
    return name


@asynccontextmanager
async def serving(path: str, handler: Handler) -> AsyncIterator[int]:
    """POST `path` answered by `handler` on 127.0.0.1; yields the port."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
