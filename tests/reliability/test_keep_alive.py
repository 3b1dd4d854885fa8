"""The keep-alive race: a client that reuses an idle connection just as the server closes
it loses the request (httpx: ReadError; the gateway never sees it). The gateway keeps idle
connections longer than the clients do (`server.keep_alive_s`, 75 s; httpx and the
OpenAI SDKs drop theirs after 5 s), so it is never the one to close first."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from tests.gatewayproc import GatewayProcess

CONFIG: dict[str, Any] = {
    "auth": {"mode": "open"},
    "providers": {"sim": {"kind": "simulated"}},
    "models": [{"name": "sim-test", "provider": "sim", "model": "sim"}],
}
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def _ask(sock: socket.socket) -> bytes:
    sock.sendall(HEALTH)
    return sock.recv(4096)


def test_a_connection_idle_longer_than_clients_keep_theirs_is_still_served(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(CONFIG)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        assert _ask(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # past the 5 s after which httpx would have dropped it
        assert _ask(sock).startswith(b"HTTP/1.1 200")


def test_an_idle_connection_is_closed_after_keep_alive_s(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway({**CONFIG, "server": {"keep_alive_s": 1}})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        assert _ask(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the gateway
        assert time.monotonic() - started < 4
