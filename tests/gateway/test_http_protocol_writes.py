"""A connection's writes within one event-loop turn leave together, in one system call."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx

from gateway.http_protocol import FLUSH_AT_BYTES, CoalescedWrites
from tests.gatewayproc import GatewayProcess


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)


def _writes(calls: list[tuple[str, bytes | None]]) -> list[bytes]:
    """Drives a CoalescedWrites over a real socket pair; what arrived, read by read.
    `flush` is what the protocol calls when a response completes."""

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, left)
        reader_transport, recorder = await loop.connect_accepted_socket(_Recorder, right)
        view = CoalescedWrites(transport)  # type: ignore[arg-type]
        for call, data in calls:
            if call == "write":
                assert data is not None
                view.write(data)
            elif call == "flush":
                view.flush()
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


def test_a_stream_written_in_one_turn_leaves_in_one_piece() -> None:
    # head, the held chunks, [DONE], the chunked terminator: one write, in order
    parts = [b"HEAD|", b"chunks|", b"[DONE]|", b"0\r\n\r\n"]
    chunks = _writes([("write", p) for p in parts] + [("tick", None)])
    assert chunks == [b"".join(parts)]


def test_writes_are_held_until_flushed_within_the_turn() -> None:
    async def run() -> tuple[bytes | None, bytes]:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        right.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, left)
        view = CoalescedWrites(transport)  # type: ignore[arg-type]
        view.write(b"HEAD|")
        view.write(b"BODY")
        try:  # no await since: still held
            early: bytes | None = right.recv(100)
        except BlockingIOError:
            early = None
        view.flush()  # the response completed: out now, not at the end of the turn
        sent = right.recv(100)
        view.close()
        right.close()
        return early, sent

    early, sent = asyncio.run(run())
    assert early is None
    assert sent == b"HEAD|BODY"


def test_a_large_body_is_not_held() -> None:
    big = b"x" * FLUSH_AT_BYTES
    chunks = _writes([("write", b"HEAD|"), ("write", big), ("write", b"tail"), ("tick", None)])
    assert b"".join(chunks) == b"HEAD|" + big + b"tail"
    assert not b"".join(chunks[:-1]).endswith(b"tail")  # the tail left in a later write


def test_a_head_without_a_body_still_leaves_within_the_loop_turn() -> None:
    chunks = _writes([("write", b"HEAD|"), ("tick", None), ("write", b"later")])
    assert chunks == [b"HEAD|", b"later"]


def test_responses_are_whole_over_http(start_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = start_gateway({"auth": {"mode": "open"}})
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):  # keep-alive: each response whole, one after the other
            response = client.get("/healthz")
            assert response.status_code == 200 and response.content
        stream = client.post(  # a chunked body: its writes leave whole and in order
            "/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert stream.status_code == 404 and stream.json()["error"]["code"]
        head = client.head("/healthz")  # no body write at all: the head still goes out
        assert head.status_code in (200, 405) and head.content == b""
        assert client.get("/healthz").status_code == 200
