"""The pooled upstream client serves every client of the gateway: a cookie one upstream
answer sets must never go back upstream with a later request (rule 11), whatever the
transport. Over a real HTTP server, named by host name: aiohttp ignores cookies from
IP addresses, so an IP would hide the bug."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.upstream import UpstreamRequest, http_upstream


@pytest.fixture(params=["aiohttp", "httpx", "httpx-aiohttp"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "httpx-aiohttp":
        pytest.importorskip("httpx_aiohttp")
    name: str = request.param
    return name


async def _cookies_sent(transport: str, calls: int) -> list[str | None]:
    sent: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        sent.append(request.headers.get("cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "upstream-secret", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream = http_upstream(transport)
    try:
        request = UpstreamRequest(f"http://localhost:{port}/v1/chat/completions", {}, b"{}")
        for _ in range(calls):
            assert (await upstream.send(request)).status == 200
        return sent
    finally:
        await upstream.aclose()
        await runner.cleanup()


def test_upstream_cookies_are_not_sent_back(transport: str) -> None:
    assert asyncio.run(_cookies_sent(transport, 3)) == [None, None, None]
