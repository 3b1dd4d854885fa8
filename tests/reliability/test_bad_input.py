"""Hostile and malformed input against a running gateway (rules 4, 10, 11, 14).

Every case checks three things: the answer (an OpenAI-shaped 4xx where the app answers,
never 422, 500 or `{"detail": ...}`), that the fake upstream received nothing, and that a
normal request right after still succeeds. tests/features/test_errors.py already covers
missing model/messages, a bad role, temperature, n=0, stream type, a nameless tool,
`api_base`, `{not json`, unknown chat model and oversized bodies (Content-Length and
chunked) on chat completions; this module adds the rest.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
MAX_MESSAGES = 1000
MAX_TOOLS = 256  # the gateway's default (server.max_tools)
MAX_DEPTH = 100  # the gateway's default (server.max_json_depth)
MAX_HEADER_BYTES = 16 * 1024  # server.max_header_bytes, below the 32 KiB default
CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
HI = [{"role": "user", "content": "hi"}]
OK_CHAT = {"model": "gpt-test", "messages": HI}


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    config = {
        "server": {
            "max_body_bytes": 1024 * 1024,
            "max_messages": MAX_MESSAGES,
            "max_header_bytes": MAX_HEADER_BYTES,
            "request_timeout_s": 5,
        },
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "fake": {
                "kind": "openai",
                "base_url": f"{fake_openai.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": {"read_s": 2.0},
            }
        },
        "routing": {"same_deployment_retries": 0},
        "models": [
            {"name": "gpt-test", "provider": "fake", "model": "gpt-4o-mini"},
            {
                "name": "embed-test",
                "provider": "fake",
                "model": "text-embedding-3-small",
                "mode": "embedding",
            },
        ],
    }
    return start_gateway(config)


# --- helpers ------------------------------------------------------------------------------


def post(
    gateway: GatewayProcess, path: str, body: Any = None, content: Any = None
) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", json=body, content=content, headers=AUTH, timeout=10)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param
    assert "Traceback" not in response.text and OPENAI_KEY not in response.text


def assert_untouched_and_serving(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    """Nothing reached the upstream, and the gateway still answers a normal request."""
    assert fake.calls == 0, [r.json for r in fake.received]
    response = post(gateway, CHAT, OK_CHAT)
    assert response.status_code == 200, response.text
    validate(response.json(), "CreateChatCompletionResponse")
    assert fake.calls == 1 and fake.violations == []
    fake.reset()


def rejected(
    gateway: GatewayProcess,
    fake: FakeOpenAI,
    response: httpx.Response,
    status: int = 400,
    param: str | None = None,
) -> None:
    assert_openai_error(response, status, param)
    assert_untouched_and_serving(gateway, fake)


def deep_body(depth: int, field: str = "metadata") -> bytes:
    """A valid chat body whose `field` makes the whole body `depth` containers deep.
    (Built as bytes: the encoders of the client libraries stop long before 10,000.)"""
    lists = depth - 1  # the body object is the first level
    value = b"[" * lists + b'"leaf"' + b"]" * lists
    return json.dumps(OK_CHAT)[:-1].encode() + f', "{field}": '.encode() + value + b"}"


# --- JSON bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (CHAT, b""),
        (CHAT, b"[]"),
        (CHAT, b'"a string"'),
        (CHAT, b"null"),
        (CHAT, b"42"),
        (CHAT, b'{"model": "gpt-test", "messages": ['),  # truncated
        (CHAT, b'{"model": "gpt-test", "messages": [], "x": NaN}'),
        (CHAT, b'\xff\xfe{"model": "gpt-test"}'),  # not UTF-8
        (CHAT, b'{"model": "gpt-\xc3\x28test"}'),  # invalid UTF-8 inside a string
        (EMBED, b"{not json"),
        (EMBED, b"[1, 2]"),
    ],
    ids=[
        "empty",
        "array",
        "string",
        "null",
        "number",
        "truncated",
        "nan",
        "bom",
        "utf8",
        "embed-broken",
        "embed-array",
    ],
)
def test_non_object_or_broken_json_is_400(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, path: str, content: bytes
) -> None:
    rejected(gateway, fake_openai, post(gateway, path, content=content))


CHAT_WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("model", 42, "model"),
    ("model", ["gpt-test"], "model"),
    ("model", "", "model"),
    ("messages", {"role": "user", "content": "hi"}, "messages"),
    ("messages", "hi", "messages"),
    ("messages", [], "messages"),
    ("messages", [42], "messages[0]"),
    ("messages", [{"role": "user", "content": 42}], "messages[0].content"),
    ("messages", [{"role": "user", "content": [42]}], "messages[0].content"),
    ("messages", [{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0].type"),
    ("messages", [{"role": 1, "content": "x"}], "messages[0].role"),
    ("top_p", "1", "top_p"),
    ("top_p", True, "top_p"),
    ("frequency_penalty", [], "frequency_penalty"),
    ("presence_penalty", 3, "presence_penalty"),
    ("max_tokens", "10", "max_tokens"),
    ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("max_completion_tokens", 0, "max_completion_tokens"),
    ("top_logprobs", -1, "top_logprobs"),
    ("seed", "7", "seed"),
    ("n", 2.5, "n"),
    ("n", 129, "n"),  # above max_n (OpenAI's 128): a fan-out bound
    ("stop", 5, "stop"),
    ("stop", ["a", 1], "stop"),
    ("stream_options", "yes", "stream_options"),
    ("tools", {"type": "function"}, "tools"),
    ("tools", ["f"], "tools[0].function.name"),
    ("response_format", "json", "response_format"),
    ("response_format", {}, "response_format"),
]


@pytest.mark.parametrize(
    ("field", "value", "param"),
    CHAT_WRONG_TYPES,
    ids=[f"{f}={v!r}" for f, v, _ in CHAT_WRONG_TYPES],
)
def test_chat_wrong_types_are_400_naming_param(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, field: str, value: Any, param: str
) -> None:
    rejected(gateway, fake_openai, post(gateway, CHAT, {**OK_CHAT, field: value}), param=param)


EMBED_BAD: list[tuple[dict[str, Any], str]] = [
    ({"model": "embed-test"}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": 42, "input": "hi"}, "model"),
    ({"model": "embed-test", "input": 42}, "input"),
    ({"model": "embed-test", "input": []}, "input"),
    ({"model": "embed-test", "input": None}, "input"),
    ({"model": "embed-test", "input": {"text": "hi"}}, "input"),
    ({"model": "embed-test", "input": [1.5]}, "input"),
    ({"model": "embed-test", "input": ["a", 1]}, "input"),
    ({"model": "embed-test", "input": [[1], "a"]}, "input"),
    ({"model": "embed-test", "input": [True, False]}, "input"),  # bool is an int in Python
    ({"model": "embed-test", "input": [[1], []]}, "input"),  # an empty token array
]


@pytest.mark.parametrize(("body", "param"), EMBED_BAD, ids=[json.dumps(b) for b, _ in EMBED_BAD])
def test_embedding_missing_or_wrong_fields_are_400(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    rejected(gateway, fake_openai, post(gateway, EMBED, body), param=param)


@pytest.mark.parametrize(
    "message",
    [{"content": "no role"}, {"role": "user"}, {"role": "system"}],
    ids=["no-role", "user-no-content", "system-no-content"],
)
def test_missing_message_fields_are_400(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, message: dict[str, Any]
) -> None:
    rejected(gateway, fake_openai, post(gateway, CHAT, {**OK_CHAT, "messages": [message]}))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (EMBED, {"model": "nope", "input": "hi"}),
        (EMBED, {"model": "gpt-test", "input": "hi"}),  # a chat model is not an embedder
        (CHAT, {"model": "embed-test", "messages": HI}),  # and the other way round
    ],
    ids=["embed-unknown", "embed-with-chat-model", "chat-with-embed-model"],
)
def test_unknown_model_for_the_endpoint_is_404(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, path: str, body: dict[str, Any]
) -> None:
    response = post(gateway, path, body)
    rejected(gateway, fake_openai, response, status=404, param="model")
    assert response.json()["error"]["code"] == "model_not_found"


# --- size and shape bounds (rule 14) ------------------------------------------------------


def test_declared_huge_body_is_413_before_any_byte_of_it(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    """A terabyte Content-Length is refused from the header: the gateway does not wait."""
    head = request_head(CHAT, ["Content-Length: 1000000000000"])
    status, raw = raw_exchange(gateway, head)
    assert status == 413
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    validate(body, "ErrorResponse")
    assert_untouched_and_serving(gateway, fake_openai)


def test_chunked_embedding_body_over_limit_is_413(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the bound holds while reading
        yield b'{"model": "embed-test", "input": ["'
        for _ in range(300):
            yield b"x" * 4096
        yield b'"]}'

    rejected(gateway, fake_openai, post(gateway, EMBED, content=chunks()), status=413)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 10_000], ids=["limit+1", "300", "10000"])
def test_deeply_nested_json_is_400(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, depth: int
) -> None:
    # 300 levels used to parse (orjson reads 1024) and then fail to re-encode upstream
    # (orjson writes 254): a 500. 10,000 levels stop in the parser.
    rejected(gateway, fake_openai, post(gateway, CHAT, content=deep_body(depth)))


def test_deeply_nested_bare_body_is_400(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    rejected(gateway, fake_openai, post(gateway, CHAT, content=b"[" * 10_000))


def test_nesting_at_the_limit_is_served(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    response = post(gateway, CHAT, content=deep_body(MAX_DEPTH))
    assert response.status_code == 200, response.text
    sent = fake_openai.received[-1].json["metadata"]
    for _ in range(MAX_DEPTH - 2):  # forwarded intact, all the way down
        sent = sent[0]
    assert sent == ["leaf"] and fake_openai.violations == []


def test_thousands_of_messages(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    at_limit = {**OK_CHAT, "messages": HI * MAX_MESSAGES}
    assert post(gateway, CHAT, at_limit).status_code == 200
    assert len(fake_openai.received[-1].json["messages"]) == MAX_MESSAGES
    fake_openai.reset()
    over = {**OK_CHAT, "messages": HI * 5000}
    rejected(gateway, fake_openai, post(gateway, CHAT, over), param="messages")


def test_thousands_of_tools(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(5000)]
    body = {**OK_CHAT, "tools": tools[:MAX_TOOLS], "tool_choice": "none"}
    assert post(gateway, CHAT, body).status_code == 200
    fake_openai.reset()
    rejected(gateway, fake_openai, post(gateway, CHAT, {**body, "tools": tools}), param="tools")


def test_thousands_of_embedding_inputs(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    body = {"model": "embed-test", "input": ["a"] * (MAX_MESSAGES + 1)}
    rejected(gateway, fake_openai, post(gateway, EMBED, body), param="input")


# --- client-controlled egress (rule 10) ---------------------------------------------------

EGRESS = [
    "base_url",
    "api_key",
    "extra_headers",
    "user_config",
    "api_version",
    "headers",
    "custom_llm_provider",
]


@pytest.mark.parametrize("field", EGRESS)
def test_chat_egress_fields_are_rejected(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, field: str
) -> None:
    value: Any = (
        {"Authorization": "Bearer x"}
        if "header" in field or field == "user_config"
        else "http://127.0.0.1:9/v1"
    )
    rejected(gateway, fake_openai, post(gateway, CHAT, {**OK_CHAT, field: value}), param=field)


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "extra_headers"])
def test_embedding_egress_fields_are_rejected(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, field: str
) -> None:
    body = {"model": "embed-test", "input": "hi", field: "http://127.0.0.1:9/v1"}
    rejected(gateway, fake_openai, post(gateway, EMBED, body), param=field)


# --- headers (rules 11, 14) ---------------------------------------------------------------


def test_client_credentials_and_identity_headers_never_reach_upstream(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    sneaky = {
        "cookie": "session=client-secret",
        "openai-organization": "org-client",
        "openai-project": "proj-client",
        "x-forwarded-for": "10.0.0.1",
        "proxy-authorization": "Basic Y2xpZW50OnNlY3JldA==",
        "x-api-key": "client-x-api-key",
        "x-custom-trace": "client-value",
    }
    response = httpx.post(
        f"{gateway.url}{CHAT}", json=OK_CHAT, headers={**AUTH, **sneaky}, timeout=10
    )
    assert response.status_code == 200, response.text
    sent = {k.lower(): v for k, v in fake_openai.received[-1].headers.items()}
    assert sent["authorization"] == f"Bearer {OPENAI_KEY}"  # ours, not the client's
    assert not set(sneaky) & set(sent), set(sneaky) & set(sent)
    assert not any(v in json.dumps(sent) for v in [GATEWAY_KEY, *sneaky.values()])
    assert fake_openai.violations == []


def request_head(path: str, extra: list[str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gateway",
        f"Authorization: Bearer {GATEWAY_KEY}",
        "Content-Type: application/json",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def raw_exchange(
    gateway: GatewayProcess, data: bytes, half_close: bool = False
) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes (every head says `Connection: close`).
    (0, b"") when it just hangs up. `half_close` sends EOF after the data (a client gone)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: its answer may still be readable
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    if not received:
        return 0, b""
    return int(received.split(b" ", 2)[1]), received


def check_framing_answer(status: int, raw: bytes) -> None:
    """uvicorn's HTTP layer (httptools) answers malformed framing itself, before the app:
    a bare `400 Invalid HTTP request received.` in text/plain with `connection: close`.
    That is acceptable for framing (no client SDK sends it); anything the app answers
    must be OpenAI-shaped. Never a 5xx, never a body that came from the upstream."""
    assert status == 0 or 400 <= status < 500, raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"application/json" in head.lower():
        validate(json.loads(body), "ErrorResponse")
    elif status:
        assert status == 400 and b"connection: close" in head.lower(), raw[:300]


BODY = json.dumps(OK_CHAT).encode()
CL = f"Content-Length: {len(BODY)}"
CHUNKED = b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
MALFORMED: dict[str, bytes] = {
    "lf-in-value": request_head(CHAT, ["X-A: a\nOpenAI-Organization: org-evil", CL]) + BODY,
    "cr-in-value": request_head(CHAT, ["X-A: a\rCookie: evil=1", CL]) + BODY,
    "nul-in-value": request_head(CHAT, ["X-A: a\x00b", CL]) + BODY,
    "no-colon": request_head(CHAT, ["NotAHeader", CL]) + BODY,
    "space-before-colon": request_head(CHAT, ["Content-Length : 5", CL]) + BODY,
    "cl-and-te": request_head(CHAT, ["Content-Length: 5", "Transfer-Encoding: chunked"]) + CHUNKED,
    "te-and-cl": request_head(CHAT, ["Transfer-Encoding: chunked", CL]) + CHUNKED,
    "two-cl": request_head(CHAT, [CL, "Content-Length: 5"]) + BODY,
    "negative-cl": request_head(CHAT, ["Content-Length: -1"]) + BODY,
    "te-identity": request_head(CHAT, ["Transfer-Encoding: identity", CL]) + BODY,
    "bad-chunk-size": request_head(CHAT, ["Transfer-Encoding: chunked"]) + b"zz\r\n" + BODY,
    "short-chunk": request_head(CHAT, ["Transfer-Encoding: chunked"])
    + b"5\r\n"
    + BODY
    + b"\r\n0\r\n\r\n",
    "chunk-ext-garbage": request_head(CHAT, ["Transfer-Encoding: chunked"])
    + b"%x;\x00\r\n" % len(BODY)
    + BODY
    + b"\r\n0\r\n\r\n",
    "bad-version": f"POST {CHAT} HTTP/9.9\r\n{CL}\r\n\r\n".encode() + BODY,
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_framing_is_refused_and_never_forwarded(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, data: bytes
) -> None:
    status, raw = raw_exchange(gateway, data)
    check_framing_answer(status, raw)
    assert_untouched_and_serving(gateway, fake_openai)


def test_body_cut_off_mid_chunk_is_not_a_server_error(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    """The client hangs up inside a chunked body: no answer is possible, but the gateway
    must log it as the client's (499), not as an unhandled exception."""
    data = request_head(CHAT, ["Transfer-Encoding: chunked"]) + b"%x\r\n" % len(BODY) + BODY[:10]
    status, _ = raw_exchange(gateway, data, half_close=True)
    assert status in (0, 400, 499)
    deadline = time.monotonic() + 5
    while '"status":499' not in gateway.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = gateway.log_text()
    assert '"status":499' in log and "ClientDisconnect" not in log
    assert_untouched_and_serving(gateway, fake_openai)


@pytest.mark.parametrize(
    "headers",
    [
        [f"X-Big: {'a' * (2 * MAX_HEADER_BYTES)}", CL],
        [*(f"X-H{i}: {'v' * 16}" for i in range(3000)), CL],
        [f"X-Huge: {'a' * (4 * 1024 * 1024)}", CL],  # never finished from the server's view
    ],
    ids=["one-big", "thousands", "4MiB"],
)
def test_oversized_headers_are_431(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, headers: list[str]
) -> None:
    status, raw = raw_exchange(gateway, request_head(CHAT, headers) + BODY)
    # The gateway answers 431 and closes; if it closes while the client is still sending,
    # the kernel may turn the unread rest into a reset that drops the answer: then 0.
    assert status in (0, 431), raw[:300]
    if status:
        validate(json.loads(raw.split(b"\r\n\r\n", 1)[1]), "ErrorResponse")
    assert_untouched_and_serving(gateway, fake_openai)


def test_headers_below_the_bound_are_served(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    big = f"X-Big: {'a' * (MAX_HEADER_BYTES // 2)}"
    status, raw = raw_exchange(gateway, request_head(CHAT, [big, CL]) + BODY)
    assert status == 200, raw[:300]
    assert "x-big" not in {k.lower() for k in fake_openai.received[-1].headers}


# --- slow clients -------------------------------------------------------------------------


class Slowloris:
    """Sockets that send a request head one byte at a time and never finish it."""

    def __init__(self, gateway: GatewayProcess, count: int, interval_s: float) -> None:
        self.sockets = [
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(count)
        ]
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.sent = 0

    def _trickle(self) -> None:
        head = request_head(CHAT, [f"X-Slow: {'s' * 10_000}"])
        for byte in head:
            if self.stop.wait(self.interval_s):
                return
            for sock in self.sockets:
                sock.send(bytes([byte]))
            self.sent += 1

    def __enter__(self) -> Slowloris:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


def test_slow_header_clients_do_not_starve_real_requests(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    with Slowloris(gateway, count=50, interval_s=0.05) as slow:
        deadline = time.monotonic() + 5
        while slow.sent < 5 and time.monotonic() < deadline:  # every socket has started
            time.sleep(0.02)
        assert slow.sent >= 5
        for _ in range(20):
            started = time.monotonic()
            response = post(gateway, CHAT, OK_CHAT)
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < 2.0  # generous: a loopback call takes ms
        assert slow.thread.is_alive()  # the slow heads were still open the whole time
    assert fake_openai.calls == 20 and fake_openai.violations == []
