"""A response's head goes out with the first piece of its body, in one write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx

from gateway.http_protocol import HeadWithBody
from tests.gatewayproc import GatewayProcess


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)


def _writes(calls: list[tuple[str, bytes | None]]) -> list[bytes]:
    """Drives a HeadWithBody over a real socket pair; what arrived, read by read."""

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, left)
        reader_transport, recorder = await loop.connect_accepted_socket(_Recorder, right)
        view = HeadWithBody(transport)  # type: ignore[arg-type]
        for call, data in calls:
            if call == "write":
                assert data is not None
                view.write(data)
            elif call == "tick":
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        view.close()
        reader_transport.close()
        return recorder.chunks

    return asyncio.run(run())


def test_head_and_body_leave_together() -> None:
    chunks = _writes([("write", b"HEAD|"), ("write", b"BODY"), ("tick", None)])
    assert chunks == [b"HEAD|BODY"]


def test_a_head_without_a_body_still_leaves_within_the_loop_turn() -> None:
    chunks = _writes([("write", b"HEAD|"), ("tick", None), ("write", b"later")])
    assert chunks == [b"HEAD|", b"later"]


def test_responses_are_whole_over_http(start_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = start_gateway({"auth": {"mode": "open"}})
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):  # keep-alive: each response whole, one after the other
            response = client.get("/healthz")
            assert response.status_code == 200 and response.content
        head = client.head("/healthz")  # no body write at all: the head still goes out
        assert head.status_code in (200, 405) and head.content == b""
        assert client.get("/healthz").status_code == 200
