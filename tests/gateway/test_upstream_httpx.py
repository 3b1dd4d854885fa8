"""The gateway with `server.upstream_transport: aiohttp` or `httpx` (and httpx over
aiohttp, when the `bench` extra is installed) behaves as with the default `native`
transport: the same answers, the same error statuses, no redirects followed, hang-ups
passed upstream.

A few representative cases; the full fault matrix runs on the default transport."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.configs import fake_and_dead
from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import REPO, GatewayProcess
from tests.openai_schema import validate
from tests.promtext import eventually

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
MESSAGES = [{"role": "user", "content": "Hi"}]
READ_S = 0.5  # the upstream's first-byte and idle timeout: the timeout cases wait this long


@pytest.fixture(scope="module")
def fake_trap() -> Iterator[FakeOpenAI]:
    """A redirect's target: must never be called."""
    fake = FakeOpenAI(api_key=OPENAI_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["aiohttp", "httpx", "httpx-aiohttp"])
def gateway(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
) -> GatewayProcess:
    if request.param == "httpx-aiohttp":
        pytest.importorskip("httpx_aiohttp", reason="the `bench` extra is not installed")
    server = {"upstream_transport": request.param, "request_timeout_s": 10}
    config = fake_and_dead(
        fake_openai, server, {"connect_s": 2.0, "read_s": READ_S, "total_s": 5.0}
    )
    return start_gateway(config)


@pytest.fixture
def long_reply(fake_openai: FakeOpenAI) -> Iterator[str]:
    """A reply of many stream chunks (the fake's reply outlives its per-test reset)."""
    saved = fake_openai.reply
    fake_openai.reply = " ".join(f"w{i}" for i in range(40))
    yield fake_openai.reply
    fake_openai.reply = saved


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def post(gateway: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=AUTH, timeout=10)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == code


def test_non_stream_chat(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == fake_openai.reply
    assert completion.usage is not None and completion.usage.total_tokens > 0
    validate(json.loads(raw.http_response.content), "CreateChatCompletionResponse")
    assert raw.headers["x-gateway-deployment"] == "fake/gpt-4o-mini"
    sent = fake_openai.received[-1]
    assert sent.json["model"] == "gpt-4o-mini"
    assert fake_openai.violations == []


def test_stream_chat_relays_every_chunk_and_done(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, long_reply: str
) -> None:
    fake_openai.script(Behaviour(chunk_delay_s=0.002))
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=AUTH, timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip() == long_reply
    assert fake_openai.violations == []


def test_upstream_500_is_502(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Behaviour(status=500))
    assert_error(
        post(gateway, {"model": "gpt-test", "messages": MESSAGES}), 502, "upstream_unavailable"
    )


def test_connection_refused_is_502_not_a_timeout(gateway: GatewayProcess) -> None:
    # httpx-aiohttp labels a refused connection ConnectTimeout: it must still be a 502.
    response = post(gateway, {"model": "dead-model", "messages": MESSAGES})
    assert_error(response, 502, "upstream_unavailable")


@pytest.mark.parametrize(
    ("stream", "behaviour"),
    [
        (False, Behaviour(hang_s=3)),  # nothing, not even headers
        (False, Behaviour(stall_body_s=3)),  # headers and half the body, then nothing
        (True, Behaviour(hang_s=3)),
    ],
    ids=["json-before-headers", "json-mid-body", "stream-before-headers"],
)
def test_upstream_timeout_is_504_and_hangs_up(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, stream: bool, behaviour: Behaviour
) -> None:
    fake_openai.script(behaviour)
    response = post(gateway, {"model": "gpt-test", "messages": MESSAGES, "stream": stream})
    assert_error(response, 504, "upstream_timeout")
    assert eventually(lambda: fake_openai.abandoned == 1)  # the gateway closed its request


def test_redirect_is_not_followed(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, fake_trap: FakeOpenAI
) -> None:
    location = f"{fake_trap.base_url}/v1/chat/completions"
    fake_openai.script(Behaviour(status=307, headers={"location": location}))
    assert_error(
        post(gateway, {"model": "gpt-test", "messages": MESSAGES}), 502, "upstream_unavailable"
    )
    assert fake_trap.received == []


def test_stream_hang_up_cancels_the_upstream(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, long_reply: str
) -> None:
    fake_openai.script(Behaviour(chunk_delay_s=0.05))  # 2 s in all: still running at hang-up
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=AUTH, timeout=5
    ) as response:
        lines = response.iter_lines()
        first = [next(lines) for _ in range(4)]  # some content, then hang up
    assert any("w0" in line for line in first)
    assert eventually(lambda: fake_openai.abandoned == 1)  # cut, not read to the end


def test_httpx_aiohttp_not_installed_is_a_config_error_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  upstream_transport: httpx-aiohttp\n")
    # A real `gateway serve` in which the package cannot be imported (None in sys.modules).
    start = (
        "import sys; sys.modules['httpx_aiohttp'] = None; from gateway.cli import main; "
        f"sys.exit(main(['serve', '--config', {str(config)!r}, '--port', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", start], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "server.upstream_transport: httpx-aiohttp needs the httpx-aiohttp package" in (
        result.stderr
    )
