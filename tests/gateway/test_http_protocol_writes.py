"""A connection's writes within one event-loop turn leave together, in one system call;
a finished response is written whole, with uvicorn's framing and header checks."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.api.http_protocol import (
    FLUSH_AT_BYTES,
    BoundedHttpToolsProtocol,
    CoalescedWrites,
    hook_client_gone,
    unhook_client_gone,
    write_whole_response,
)
from tests.fakes.server import free_port
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


_SIM_CONFIG = {
    "auth": {"mode": "open"},
    "providers": {"sim": {"kind": "simulated"}},
    "models": [{"name": "sim-chat", "provider": "sim", "model": "sim-1"}],
}
_CHAT = b'{"model":"sim-chat","messages":[{"role":"user","content":"hi"}]}'


def _post(extra_head: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/" + version + b"\r\nhost: gw\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n"
        % len(_CHAT)
        + extra_head
        + b"\r\n"
        + _CHAT
    )


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _responses(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each response in `raw`, framed by content-length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append((head, rest[:length]))
        raw = rest[length:]
    return out


def test_whole_responses_keep_http_framing(start_gateway: Callable[..., GatewayProcess]) -> None:
    """Chat answers go out head and body at once (write_whole_response): two requests
    pipelined on one connection get two complete answers in order, with uvicorn's
    default headers; a client that asks to close (or speaks HTTP/1.0) gets
    `connection: close` and the connection closed after its answer."""
    gateway = start_gateway(_SIM_CONFIG)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(_post() + _post(b"connection: close\r\n"))
        answers = _responses(_read_until_closed(sock))
    assert len(answers) == 2
    for head, body in answers:
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ndate: " in head and b"\r\nx-request-id: " in head
        assert json.loads(body)["object"] == "chat.completion"
    assert b"connection: close" not in answers[0][0]
    assert b"\r\nconnection: close" in answers[1][0]
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(_post(version=b"1.0"))
        [(head, body)] = _responses(_read_until_closed(sock))
    assert b"\r\nconnection: close" in head and json.loads(body)["choices"]


def test_a_whole_response_checks_every_header() -> None:
    """Its two joined checks refuse what uvicorn's per-header checks refuse, before
    anything is written; a send that is not a uvicorn cycle's is left to ASGI."""

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, left)
        reader_transport, recorder = await loop.connect_accepted_socket(_Recorder, right)
        outcomes = []
        bad = [
            [(b"x-ok", b"fine"), (b"x-bad", b"a\r\nset-cookie: x=1")],
            [(b"x-bad name", b"v")],
            [(b"x-ok", b"fine"), (b"x-nul", b"a\x00b")],
        ]
        for headers in bad:
            cycle = _cycle(transport)
            try:
                write_whole_response(cycle.send, 200, [(b"content-length", b"2"), *headers], b"{}")
            except RuntimeError as exc:
                outcomes.append(str(exc))
            assert not cycle.response_complete
        assert not write_whole_response(_not_uvicorn, 200, [], b"")
        assert not write_whole_response(_cycle(transport).send, 204, [], b"")  # left to ASGI
        good = _cycle(transport)
        assert write_whole_response(good.send, 200, [(b"content-length", b"2")], b"{}")
        assert good.response_complete
        await asyncio.sleep(0.05)
        outcomes.append(b"".join(recorder.chunks).decode())
        transport.close()
        reader_transport.close()
        return outcomes

    *refusals, written = asyncio.run(run())
    assert refusals == [
        "Invalid HTTP header value.",
        "Invalid HTTP header name.",
        "Invalid HTTP header value.",
    ]
    assert written == "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"  # only the good one


async def _not_uvicorn(message: object) -> None:
    raise AssertionError("not called")


def _cycle(transport: asyncio.Transport) -> RequestResponseCycle:
    return RequestResponseCycle(
        scope={"method": "POST"},  # type: ignore[typeddict-item]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )


def test_a_request_hears_of_its_client_leaving_from_the_protocol() -> None:
    """hook_client_gone: under the gateway's protocol the callback comes from
    connection_lost itself, the moment the client hangs up (no watcher task); a second
    hook on the same request, or another server's receive, is refused (None)."""

    async def run() -> list[object]:
        seen: list[object] = []
        gone = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            cycle = hook_client_gone(receive, gone.set)
            seen.append(cycle is not None)
            seen.append(hook_client_gone(receive, gone.set))  # held: refused
            await asyncio.wait_for(gone.wait(), 5)
            seen.append("told")
            assert cycle is not None
            unhook_client_gone(cycle)

        port = free_port()
        config = uvicorn.Config(
            app, port=port, http=BoundedHttpToolsProtocol, lifespan="off", log_level="error"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        while not seen:
            await asyncio.sleep(0.01)
        writer.close()  # the client hangs up mid-request
        for _ in range(200):
            if "told" in seen:
                break
            await asyncio.sleep(0.01)
        seen.append(hook_client_gone(_not_uvicorn, gone.set))
        server.should_exit = True
        await serving
        return seen

    assert asyncio.run(run()) == [True, None, "told", None]


def test_an_idle_connection_closes_after_the_keep_alive_timeout_from_its_last_answer() -> None:
    """One keep-alive timer per connection, not one per request: when it comes due on
    a connection that is busy, or answered again since, it waits out the rest of the
    timeout from the last answer; a connection idle for the whole timeout is closed."""
    timeout_s = 0.4

    async def run() -> tuple[bool, bool, float]:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await receive()
            if scope["path"] == "/slow":  # busy past the timeout: must not be cut
                await asyncio.sleep(timeout_s * 1.5)
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

        port = free_port()
        config = uvicorn.Config(
            app,
            port=port,
            http=BoundedHttpToolsProtocol,
            lifespan="off",
            log_level="error",
            timeout_keep_alive=timeout_s,  # type: ignore[arg-type]  # uvicorn reads it as a float
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def exchange(path: str = "/x") -> bool:
            writer.write(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
            return (await asyncio.wait_for(reader.read(4096), 3)).endswith(b"ok")

        loop = asyncio.get_running_loop()
        assert await exchange()
        assert await exchange("/slow")
        await asyncio.sleep(timeout_s * 0.6)
        assert await exchange()  # the first answer's timer comes due during the next wait
        last_answer = loop.time()
        await asyncio.sleep(timeout_s * 0.6)  # past the first answer's timeout, not this one's
        still_open = await exchange()
        last_answer = loop.time()
        closed = await asyncio.wait_for(reader.read(4096), 3) == b""  # EOF: closed by the server
        idle_s = loop.time() - last_answer
        writer.close()
        server.should_exit = True
        await serving
        return still_open, closed, idle_s

    still_open, closed, idle_s = asyncio.run(run())
    assert still_open and closed
    assert timeout_s * 0.9 <= idle_s < timeout_s + 1.0
