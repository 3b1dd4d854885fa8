"""The uvicorn internals the gateway's HTTP protocol uses are checked at start-up: with a
uvicorn that lacks one, the gateway warns once, naming it, and serves with uvicorn's
stock h11 protocol (still bounding the head)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import openai
import pytest
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.api.http_protocol import (
    GATEWAY_PROTOCOL,
    STOCK_PROTOCOL,
    missing_uvicorn_internals,
    protocol_setting,
)
from tests.conftest import GATEWAY_KEY
from tests.gatewayproc import GatewayProcess

CONFIG: dict[str, Any] = {
    "server": {"max_header_bytes": 8192},
    "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
    "providers": {"sim": {"kind": "simulated"}},
    "models": [{"name": "sim-test", "provider": "sim", "model": "sim"}],
}
# `python -c` with a uvicorn whose protocol lost a method, then the gateway's CLI.
WITHOUT_START_TASK = [
    "-c",
    "import sys\n"
    "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
    "del HttpToolsProtocol._start_asgi_task\n"
    "from gateway.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n",
]


def test_the_installed_uvicorn_has_everything() -> None:
    assert missing_uvicorn_internals() == []
    warnings: list[str] = []
    assert protocol_setting(warnings.append) == GATEWAY_PROTOCOL
    assert warnings == []


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (HttpToolsProtocol, "_start_asgi_task"),
        (HttpToolsProtocol, "on_response_complete"),
        (httptools_impl, "STATUS_LINE"),
        (RequestResponseCycle, "run_asgi"),
    ],
)
def test_a_missing_name_is_named_and_the_stock_protocol_chosen(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str
) -> None:
    monkeypatch.delattr(owner, name)
    assert missing_uvicorn_internals() == [f"{owner.__name__}.{name}"]
    warnings: list[str] = []
    assert protocol_setting(warnings.append) == STOCK_PROTOCOL
    [warning] = warnings
    assert f"{owner.__name__}.{name}" in warning and "h11" in warning


def test_an_instance_field_uvicorn_no_longer_sets_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fields are set in uvicorn's own code (no class attribute to look at): a protocol
    class whose code never mentions `pipeline` is missing it."""

    class Renamed(HttpToolsProtocol):
        pass

    def codes_without_pipeline(cls: type) -> Any:
        for klass in cls.__mro__:
            for member in vars(klass).values():
                code = getattr(member, "__code__", None)
                if code is not None:
                    names = tuple(n for n in code.co_names if n != "pipeline")
                    yield code.replace(co_names=names)

    monkeypatch.setattr("gateway.api.http_protocol._codes", codes_without_pipeline)
    assert missing_uvicorn_internals() == ["HttpToolsProtocol.pipeline"]


@pytest.fixture(scope="module")
def degraded(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway(CONFIG, launcher=WITHOUT_START_TASK)


def test_without_a_needed_name_the_gateway_warns_once_and_serves(
    degraded: GatewayProcess,
) -> None:
    client = openai.OpenAI(base_url=degraded.base_url, api_key=GATEWAY_KEY, max_retries=0)
    with client:
        messages: Any = [{"role": "user", "content": "hello"}]
        answer = client.chat.completions.create(model="sim-test", messages=messages)
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(model="sim-test", messages=messages, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    lines = [json.loads(line) for line in degraded.log_text().splitlines() if line.startswith("{")]
    warned = [e for e in lines if "HttpToolsProtocol._start_asgi_task" in e.get("msg", "")]
    assert len(warned) == 1 and warned[0]["level"] == "warning"


def test_the_stock_protocol_still_bounds_the_head(degraded: GatewayProcess) -> None:
    """A head that keeps arriving past `server.max_header_bytes` (a never-ending header
    value) is refused with a 400 by h11, as the gateway's protocol refuses it with 431."""
    with socket.create_connection(("127.0.0.1", degraded.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")
