"""An upgrade request the gateway does not speak (h2c, as Java's HttpClient sends on its
first cleartext request) is served as plain HTTP/1.1 with its body, on raw sockets
against the real gateway, and the connection goes on serving the requests after it."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import GATEWAY_KEY
from tests.gatewayproc import GatewayProcess

H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)
CONFIG: dict[str, Any] = {
    "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
    "providers": {"sim": {"kind": "simulated"}},
    "models": [{"name": "sim-test", "provider": "sim", "model": "sim"}],
}


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway(CONFIG)


def _chat_body(text: str) -> bytes:
    body = {"model": "sim-test", "messages": [{"role": "user", "content": text}]}
    return json.dumps(body).encode()


def _post(body: bytes, extra: bytes = b"", *, chunked: bool = False) -> bytes:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
        b"Authorization: Bearer " + GATEWAY_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\n" + extra
    )
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    half = len(body) // 2
    pieces = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + pieces + b"0\r\n\r\n"


def _get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode() + extra + b"\r\n"


def _exchange(gateway: GatewayProcess, data: bytes, answers: int) -> list[tuple[int, bytes]]:
    """Sends `data` on one connection; the first `answers` responses (status, body)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(data)
        buffer, responses = b"", []
        while len(responses) < answers:
            while b"\r\n\r\n" not in buffer:
                buffer += _recv(sock)
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
            length = int(headers[b"content-length"])
            while len(buffer) < length:
                buffer += _recv(sock)
            responses.append((int(lines[0].split()[1]), buffer[:length]))
            buffer = buffer[length:]
        return responses


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    assert data, "the gateway closed the connection"
    return data


def _assert_answered(response: tuple[int, bytes], text: str) -> None:
    status, body = response
    assert status == 200, body
    answer = json.loads(body)
    assert answer["object"] == "chat.completion"
    # The simulated model's usage counts the prompt: the body was read, not dropped.
    assert answer["usage"]["prompt_tokens"] > len(text.split())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_post_asking_for_h2c_is_served_as_http1_with_its_body(
    gateway: GatewayProcess, chunked: bool
) -> None:
    text = "one two three four five six seven"
    [response] = _exchange(gateway, _post(_chat_body(text), H2C, chunked=chunked), 1)
    _assert_answered(response, text)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_connection_goes_on_after_an_upgrade_request(
    gateway: GatewayProcess, chunked: bool
) -> None:
    """Pipelined behind the upgrade request: a plain POST, a GET asking for h2c (no body),
    and a plain GET. All four are answered, in order, on the one connection."""
    data = (
        _post(_chat_body("first question"), H2C, chunked=chunked)
        + _post(_chat_body("second question here"))
        + _get("/healthz", b"Connection: Upgrade\r\nUpgrade: h2c\r\n")
        + _get("/v1/models", b"Authorization: Bearer " + GATEWAY_KEY.encode() + b"\r\n")
    )
    first, second, health, models = _exchange(gateway, data, 4)
    _assert_answered(first, "first question")
    _assert_answered(second, "second question here")
    assert health == (200, b"ok")
    assert models[0] == 200 and json.loads(models[1])["object"] == "list"


def test_a_websocket_upgrade_is_plain_http_too(gateway: GatewayProcess) -> None:
    """The gateway has no websocket endpoint: uvicorn is told so (`ws: none`), and such a
    request is answered as HTTP, with no warning in the log."""
    extra = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    [response] = _exchange(gateway, _post(_chat_body("hello there"), extra), 1)
    _assert_answered(response, "hello there")
    assert "Unsupported upgrade" not in gateway.log_text()
