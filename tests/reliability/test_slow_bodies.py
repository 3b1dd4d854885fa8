"""Slow request bodies cannot lock out other callers (rule 20): a body still arriving
after `server.body_timeout_s` gets a 408 and the connection closed, and a key with
`max_concurrent` holds at most that many of the gateway's slots (a 429 past it)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from tests.gatewayproc import GatewayProcess

SLOW_KEY = "gw-slow-CANARY-0f1e2d3c"
BOUNDED_KEY = "gw-bounded-CANARY-4b5a6978"
OTHER_KEY = "gw-other-CANARY-8c9dab0e"
BODY_TIMEOUT_S = 1.5
CONFIG: dict[str, Any] = {
    "server": {"max_concurrent_requests": 20, "body_timeout_s": BODY_TIMEOUT_S},
    "auth": {
        "mode": "keys",
        "keys": [
            {"name": "slow", "key": SLOW_KEY},
            {"name": "bounded", "key": BOUNDED_KEY, "max_concurrent": 5},
            {"name": "other", "key": OTHER_KEY},
        ],
    },
    "providers": {"sim": {"kind": "simulated"}},
    "models": [{"name": "sim-test", "provider": "sim", "model": "sim"}],
}
BODY = json.dumps({"model": "sim-test", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway(CONFIG)


@contextmanager
def slow_client(gateway: GatewayProcess, key: str) -> Iterator[socket.socket]:
    """Sends the head and half the body, then nothing more (until closed)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )
    sock.sendall(head.encode() + BODY[: len(BODY) // 2].encode())
    try:
        yield sock
    finally:
        sock.close()


def chat(gateway: GatewayProcess, key: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(f"{gateway.base_url}/chat/completions", content=BODY, headers=headers)


def test_a_body_that_stops_arriving_gets_a_408_and_the_connection_closed(
    gateway: GatewayProcess,
) -> None:
    started = time.monotonic()
    with slow_client(gateway, SLOW_KEY) as sock:
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    took = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"
    # asyncio may run a timer up to its clock resolution early: allow 0.1 s of slack below
    assert BODY_TIMEOUT_S - 0.1 <= took < BODY_TIMEOUT_S + 5


def test_slow_clients_free_their_slots_at_the_body_deadline(gateway: GatewayProcess) -> None:
    """25 slow clients of one key take every one of the 20 slots; the others are
    answered 503 meanwhile, and served again once the body deadline has passed."""
    with ExitStack() as stack:
        for _ in range(25):
            stack.enter_context(slow_client(gateway, SLOW_KEY))
        time.sleep(0.3)
        assert chat(gateway, OTHER_KEY).status_code == 503
        deadline = time.monotonic() + BODY_TIMEOUT_S + 5
        while chat(gateway, OTHER_KEY).status_code != 200:
            assert time.monotonic() < deadline, "the slots were not freed"
            time.sleep(0.2)


def test_a_key_holds_at_most_its_max_concurrent_slots(gateway: GatewayProcess) -> None:
    with ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(slow_client(gateway, BOUNDED_KEY))
        time.sleep(0.3)
        refused = chat(gateway, BOUNDED_KEY)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert refused.headers["retry-after"] == "1"
        assert chat(gateway, OTHER_KEY).status_code == 200  # the others are not locked out
    deadline = time.monotonic() + BODY_TIMEOUT_S + 5
    while chat(gateway, BOUNDED_KEY).status_code != 200:  # slots given back
        assert time.monotonic() < deadline, "the key's slots were not given back"
        time.sleep(0.2)
