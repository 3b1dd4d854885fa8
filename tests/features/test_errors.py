"""Every error is OpenAI-shaped with the status that makes the SDK do the right thing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.configs import fake_and_dead
from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    server = {"max_body_bytes": 2048, "request_timeout_s": 5}
    config = fake_and_dead(fake_openai, server, {"read_s": 1.0})
    return start_gateway(config)


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)


def post(
    gateway: GatewayProcess,
    content: bytes | None = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=content,
        json=json,
        headers={**AUTH, **(headers or {})},
        timeout=10,
    )


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert "Traceback" not in response.text and OPENAI_KEY not in response.text
    return body["error"]


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "gpt-test"}, "messages"),
        (
            {"model": "gpt-test", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "gpt-test", "messages": MESSAGES, "temperature": 7}, "temperature"),
        ({"model": "gpt-test", "messages": MESSAGES, "n": 0}, "n"),
        ({"model": "gpt-test", "messages": MESSAGES, "stream": "yes"}, "stream"),
        (
            {"model": "gpt-test", "messages": MESSAGES, "tools": [{"type": "function"}]},
            "tools[0].function.name",
        ),
        ({"model": "gpt-test", "messages": MESSAGES, "api_base": "http://evil"}, "api_base"),
    ],
    ids=[
        "no-model",
        "no-messages",
        "bad-role",
        "temperature",
        "n",
        "stream-type",
        "tool",
        "egress",
    ],
)
def test_bad_fields_are_400_naming_param(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    assert_openai_error(post(gateway, json=body), 400, param=param)
    assert fake_openai.calls == 0  # a malformed request never reaches an upstream


def test_invalid_json_is_400(gateway: GatewayProcess) -> None:
    assert_openai_error(post(gateway, content=b"{not json"), 400)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_body_over_limit_is_413(gateway: GatewayProcess) -> None:
    big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(post(gateway, json=big), 413)

    def chunked() -> Any:  # no Content-Length: the limit holds while streaming the read
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    assert_openai_error(post(gateway, content=chunked()), 413)


def test_missing_or_wrong_key_is_401(gateway: GatewayProcess) -> None:
    for client in (openai.OpenAI(base_url=gateway.base_url, api_key="wrong", max_retries=0),):
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
    response = httpx.post(f"{gateway.base_url}/chat/completions", json={})
    assert_openai_error(response, 401, code="invalid_api_key")


def test_unknown_path_and_method(gateway: GatewayProcess) -> None:
    assert_openai_error(httpx.get(f"{gateway.base_url}/nothing-here", headers=AUTH), 404)
    assert_openai_error(httpx.get(f"{gateway.base_url}/chat/completions", headers=AUTH), 405)


def test_upstream_429_keeps_retry_after(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Behaviour(status=429, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"


def test_upstream_500_is_502(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == 502


def test_upstream_timeout_is_504(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Behaviour(hang_s=3))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == 504


def test_connection_refused_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="dead-model", messages=MESSAGES)
    assert info.value.status_code == 502


def test_upstream_client_error_goes_back_as_is(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    body = {
        "error": {
            "message": "Invalid value for 'logit_bias'.",
            "type": "invalid_request_error",
            "param": "logit_bias",
            "code": "invalid_value",
        }
    }
    fake_openai.script(Behaviour(status=400, body=body))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.code == "invalid_value" and info.value.param == "logit_bias"
    assert "logit_bias" in info.value.message


def test_upstream_auth_failure_is_not_the_clients_401(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    body = {
        "error": {
            "message": f"Incorrect API key provided: {OPENAI_KEY}",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    fake_openai.script(Behaviour(status=401, body=body))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == 502
    assert OPENAI_KEY not in info.value.response.text


def test_provider_key_never_in_logs_or_responses(
    gateway: GatewayProcess, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Behaviour(status=401), Behaviour(status=500))
    for _ in range(3):
        try:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        except openai.APIError:
            pass
    log = gateway.log_text()
    assert OPENAI_KEY not in log and GATEWAY_KEY not in log
    assert "access" in log  # the access log is there, just without secrets


def test_client_disconnect_cancels_upstream_and_still_bills(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Behaviour(hang_s=5))
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.5 s
        httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers=AUTH,
            timeout=0.5,
            json={"model": "gpt-test", "messages": MESSAGES},
        )
    deadline = time.monotonic() + 3
    while fake_openai.abandoned == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_openai.abandoned == 1  # the gateway hung up on the upstream too
    access = [
        json.loads(line)
        for line in gateway.log_text().splitlines()
        if '"access"' in line and '"status":499' in line
    ]
    assert access and access[-1]["usage_estimated"] is True and access[-1]["input_tokens"] > 0
    assert access[-1]["stream_outcome"] == "client_disconnect"


def test_stream_disconnect_cancels_upstream_and_still_bills(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply = " ".join(f"w{i}" for i in range(40))
    fake_openai.script(Behaviour(chunk_delay_s=0.05))
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    try:
        with httpx.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body, headers=AUTH, timeout=5
        ) as response:
            lines = response.iter_lines()
            first = [next(lines) for _ in range(4)]  # some content, then hang up
    finally:
        fake_openai.reply = "Hello from the fake OpenAI."
    assert any("w0" in line for line in first)
    deadline = time.monotonic() + 3
    while fake_openai.abandoned == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_openai.abandoned == 1  # the upstream stream was cut, not read to the end
    time.sleep(0.2)
    access = [
        json.loads(line)
        for line in gateway.log_text().splitlines()
        if '"access"' in line and '"stream_outcome":"client_disconnect"' in line
    ]
    assert access and access[-1]["stream"] is True and access[-1]["usage_estimated"] is True
    assert access[-1]["output_tokens"] > 0  # what was produced so far is billed


def test_concurrency_bound_is_a_retryable_503(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    config = {
        "server": {"max_concurrent_requests": 2},
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "fake": {
                "kind": "openai",
                "base_url": f"{fake_openai.base_url}/v1",
                "api_key": OPENAI_KEY,
            }
        },
        "models": [{"name": "gpt-test", "provider": "fake", "model": "gpt-4o-mini"}],
    }
    small = start_gateway(config)
    fake_openai.script(*[Behaviour(delay_s=0.5)] * 4)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=5) as client:
            body = {"model": "gpt-test", "messages": MESSAGES}
            calls = [
                client.post(f"{small.base_url}/chat/completions", json=body, headers=AUTH)
                for _ in range(4)
            ]
            return list(await asyncio.gather(*calls))

    statuses = sorted(r.status_code for r in asyncio.run(burst()))
    assert statuses == [200, 200, 503, 503]
    rejected = [r for r in asyncio.run(burst()) if r.status_code == 503][0]
    assert_openai_error(rejected, 503, code="gateway_overloaded")
    assert rejected.headers["retry-after"] == "1"

    async def messages_burst() -> list[httpx.Response]:
        """The same bound on Anthropic's Messages API: its own error shape."""
        async with httpx.AsyncClient(timeout=5) as client:
            body = {"model": "gpt-test", "max_tokens": 16, "messages": MESSAGES}
            calls = [
                client.post(f"{small.base_url}/messages", json=body, headers=AUTH) for _ in range(4)
            ]
            return list(await asyncio.gather(*calls))

    fake_openai.script(*[Behaviour(delay_s=0.5)] * 2)
    answers = asyncio.run(messages_burst())
    assert sorted(r.status_code for r in answers) == [200, 200, 503, 503]
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "The gateway is at capacity."},
    }
    assert shed.headers["retry-after"] == "1"
