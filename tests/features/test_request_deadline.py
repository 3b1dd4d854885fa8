"""`server.request_timeout_s` ends an attempt that the provider's own timeouts would
still allow, on every transport: a 504 at the deadline, and the upstream call cut."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.configs import fake_and_dead
from tests.conftest import GATEWAY_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate
from tests.promtext import eventually

DEADLINE_S = 1.0
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module", params=["native", "aiohttp", "httpx"])
def gateway(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
) -> GatewayProcess:
    server = {"upstream_transport": request.param, "request_timeout_s": DEADLINE_S}
    config = fake_and_dead(fake_openai, server, {"connect_s": 5, "read_s": 30, "total_s": 60})
    return start_gateway(config)


@pytest.mark.parametrize(
    ("stream", "behaviour"),
    [
        (False, Behaviour(hang_s=4)),  # nothing before the deadline
        (False, Behaviour(stall_body_s=4)),  # headers and half the body, then nothing
        (True, Behaviour(first_content_delay_s=4)),  # the stream opens, no content yet
    ],
    ids=["json-before-headers", "json-mid-body", "stream-before-content"],
)
def test_the_request_deadline_ends_the_attempt(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, stream: bool, behaviour: Behaviour
) -> None:
    fake_openai.script(behaviour)
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": stream}
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=AUTH, timeout=10
    )
    took_s = time.monotonic() - started
    assert response.status_code == 504, response.text
    validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert DEADLINE_S - 0.05 < took_s < DEADLINE_S + 1.5  # not read_s (30 s), not later
    assert eventually(lambda: fake_openai.abandoned == 1)  # the gateway hung up upstream


def test_the_sdk_sees_a_504_it_may_retry(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Behaviour(hang_s=4))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert caught.value.response.headers.get("x-should-retry") != "false"
