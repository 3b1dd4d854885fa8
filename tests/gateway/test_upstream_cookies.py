"""The pooled upstream client serves every client of the gateway: a cookie one upstream
answer sets must never go back upstream with a later request (rule 11), whatever the
transport. Over a real HTTP server, named by host name: aiohttp ignores cookies from
IP addresses, so an IP would hide the bug."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.transport.base import UpstreamRequest
from gateway.transport.dispatch import http_upstream
from tests.gateway.upstream_server import TRANSPORTS, serving, transport_name


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return transport_name(request)


async def _cookies_sent(transport: str, calls: int) -> list[str | None]:
    sent: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        sent.append(request.headers.get("cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "upstream-secret", path="/")
        return response

    async with serving("/v1/chat/completions", handler) as port:
        upstream = http_upstream(transport)
        try:
            request = UpstreamRequest(f"http://localhost:{port}/v1/chat/completions", {}, b"{}")
            for _ in range(calls):
                assert (await upstream.send(request)).status == 200
            return sent
        finally:
            await upstream.aclose()


def test_upstream_cookies_are_not_sent_back(transport: str) -> None:
    assert asyncio.run(_cookies_sent(transport, 3)) == [None, None, None]
