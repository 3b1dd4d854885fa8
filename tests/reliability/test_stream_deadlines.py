"""Every wait of a stream has a deadline, through the real gateway on both transports.

- An upstream that sends only `: keep-alive` comments is idle: no event for the
  provider's `read_s` fails the stream (the comments reset no timer). Before the first
  content that is a timeout that falls over to the next deployment; after it, an
  in-band error event and no `[DONE]`.
- `server.stream_timeout_s` bounds a whole stream: a slow but steady stream still running
  at that age ends with the in-band error (`stream_timeout`), is billed for what it
  produced, and its deployment is not cooled down (the limit is the gateway's).

Timings are bounded generously (a deadline plus a few seconds), never tightly.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.errors import StreamTimeoutError, UpstreamTimeoutError
from gateway.transport.sse import EventBatches
from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate
from tests.promtext import Scrape, eventually, scrape, scrape_until
from tests.reliability.helpers import delta, own_fake, wait_access_line

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ASK = [{"role": "user", "content": "Take your time."}]
PROMPT_TOKENS = math.ceil(len(ASK[0]["content"]) / 4)  # the gateway's estimate: chars / 4
TRANSPORTS = ("native", "httpx")
IDLE_READ_S = 1.5  # read_s of the provider whose streams go quiet
STEADY_READ_S = 5.0  # read_s of the provider whose streams are slow but steady
STREAM_TIMEOUT_S = 4.0  # server.stream_timeout_s
KEEPALIVE_EVERY_S = 0.25  # well inside read_s: the transport's byte timer never fires
SLACK_S = 3.0
BACKUP = "backup/backup"
BACKUP_REPLY = "backup answer"
LONG_REPLY = " ".join(f"w{i}" for i in range(60))
IN_USD, OUT_USD = 1.0, 2.0
COOLDOWN_METRIC = "gateway_deployment_cooldown_until_timestamp_seconds"


# --- the gateways -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_slow() -> Iterator[FakeOpenAI]:
    yield from own_fake(LONG_REPLY)


@pytest.fixture(scope="module")
def fake_backup() -> Iterator[FakeOpenAI]:
    yield from own_fake(BACKUP_REPLY)


def gateway_config(transport: str, slow: FakeOpenAI, backup: FakeOpenAI) -> dict[str, Any]:
    def provider(base_url: str, read_s: float) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": f"{base_url}/v1",
            "api_key": OPENAI_KEY,
            "timeouts": {"connect_s": 1.0, "read_s": read_s},
        }

    def model(name: str, provider_name: str) -> dict[str, Any]:
        return {
            "name": name,
            "id": f"{provider_name}/{name}",
            "provider": provider_name,
            "model": "gpt-4o-mini",
            "input_price_per_mtok_usd": IN_USD,
            "output_price_per_mtok_usd": OUT_USD,
        }

    names = {
        "idle": ("keepalive-before", "keepalive-after"),
        "steady": ("long-stream", "slow-first-token"),
    }
    models = [model("backup", "backup")]
    routes = []
    for provider_name, cases in names.items():
        for case in cases:
            models.append(model(case, provider_name))
            routes.append({"name": f"r-{case}", "policy": "fallback", "models": [case, "backup"]})
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "server": {
            "request_timeout_s": 30,
            "stream_timeout_s": STREAM_TIMEOUT_S,
            "upstream_transport": transport,
        },
        "routing": {"cooldown_failures": 1, "cooldown_s": 60, "same_deployment_retries": 0},
        "providers": {
            "idle": provider(slow.base_url, IDLE_READ_S),
            "steady": provider(slow.base_url, STEADY_READ_S),
            "backup": provider(backup.base_url, STEADY_READ_S),
        },
        "models": models,
        "routes": routes,
    }


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., GatewayProcess],
    fake_slow: FakeOpenAI,
    fake_backup: FakeOpenAI,
) -> GatewayProcess:
    return start_gateway(gateway_config(request.param, fake_slow, fake_backup))


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=30
    ) as sdk:
        yield sdk


# --- helpers ------------------------------------------------------------------------------


def settled(gateway: GatewayProcess, before: Scrape, route: str) -> Scrape:
    def done(s: Scrape) -> bool:
        return delta(s, before, "gateway_requests_total", route=route) == 1

    return scrape_until(gateway.url, done)


def explain(gateway: GatewayProcess, route: str) -> dict[str, Any]:
    body = {"model": route, "messages": ASK, "stream": True}
    response = httpx.post(f"{gateway.base_url}/route/explain", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def rejected(gateway: GatewayProcess, route: str) -> list[tuple[str, str]]:
    return [(r["deployment_id"], r["reason"]) for r in explain(gateway, route)["rejected"]]


def stream_until_error(
    client: openai.OpenAI, route: str, request_id: str
) -> tuple[str, openai.APIError, float]:
    """(the text received, the in-band error, seconds from the last content to the error)."""
    received: list[Any] = []
    last_content = time.monotonic()
    with (
        client.chat.completions.create(
            model=route, messages=ASK, stream=True, extra_headers={"x-request-id": request_id}
        ) as stream,
        pytest.raises(openai.APIError) as info,
    ):
        for chunk in stream:
            received.append(chunk)
            last_content = time.monotonic()
    quiet_s = time.monotonic() - last_content
    # An in-band error event (the SDK stops there: no [DONE]), not a cut connection.
    assert not isinstance(info.value, openai.APIConnectionError)
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    return text, info.value, quiet_s


# --- keep-alive comments only: idle -------------------------------------------------------


def test_keepalive_only_before_content_times_out_and_falls_over(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fake_slow: FakeOpenAI,
    fake_backup: FakeOpenAI,
) -> None:
    route, dep = "r-keepalive-before", "idle/keepalive-before"
    # The role preamble, then comments only: no content ever comes.
    fake_slow.script(Behaviour(keepalive_only_from=(1, KEEPALIVE_EVERY_S)))
    before = scrape(gateway.url)
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model=route, messages=ASK, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    elapsed_s = time.monotonic() - started
    assert text.strip() == BACKUP_REPLY
    assert (raw.headers["x-gateway-deployment"], raw.headers["x-gateway-attempts"]) == (BACKUP, "2")
    assert IDLE_READ_S <= elapsed_s <= IDLE_READ_S + SLACK_S, elapsed_s
    # The gateway hung up on the idle upstream.
    assert eventually(lambda: fake_slow.abandoned == 1)

    after = settled(gateway, before, route)
    timeouts = {"deployment": dep, "outcome": "timeout"}
    assert delta(after, before, "gateway_upstream_requests_total", **timeouts) == 1
    assert delta(after, before, "gateway_fallbacks_total", route=route, reason="timeout") == 1
    assert after.value(COOLDOWN_METRIC, deployment=dep) > time.time()
    assert (dep, "cooldown") in rejected(gateway, route)


def test_keepalive_only_after_content_fails_in_band(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fake_slow: FakeOpenAI,
    fake_backup: FakeOpenAI,
) -> None:
    route, dep = "r-keepalive-after", "idle/keepalive-after"
    request_id = f"idle-{uuid.uuid4().hex}"
    # The role preamble, two words, then comments only.
    fake_slow.script(Behaviour(keepalive_only_from=(3, KEEPALIVE_EVERY_S), chunk_delay_s=0.05))
    text, error, quiet_s = stream_until_error(client, route, request_id)
    assert text == "w0 w1 "
    assert error.code == "upstream_timeout"
    assert IDLE_READ_S - 0.5 <= quiet_s <= IDLE_READ_S + SLACK_S, quiet_s
    assert fake_backup.calls == 0  # past the commit point there is no fallback
    assert eventually(lambda: fake_slow.abandoned == 1)

    line = wait_access_line(gateway, request_id)
    assert (line["status"], line["stream_outcome"]) == (200, "error")
    assert line["error_code"] == "upstream_timeout"
    assert line["usage_estimated"] is True and line["input_tokens"] == PROMPT_TOKENS
    assert line["output_tokens"] == math.ceil(len(text) / 4)
    # An upstream that goes quiet is unhealthy: cooled down like one that stalls.
    assert (dep, "cooldown") in rejected(gateway, route)


# --- server.stream_timeout_s: the whole stream --------------------------------------------


def test_stream_timeout_ends_a_steady_stream_in_band_and_bills(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fake_slow: FakeOpenAI,
    fake_backup: FakeOpenAI,
) -> None:
    route, dep = "r-long-stream", "steady/long-stream"
    request_id = f"long-{uuid.uuid4().hex}"
    # 60 words, one every 0.2 s (12 s): never idle, but longer than stream_timeout_s.
    fake_slow.script(Behaviour(chunk_delay_s=0.2))
    before = scrape(gateway.url)
    started = time.monotonic()
    text, error, _ = stream_until_error(client, route, request_id)
    elapsed_s = time.monotonic() - started
    assert error.code == "stream_timeout"
    assert STREAM_TIMEOUT_S - 0.5 <= elapsed_s <= STREAM_TIMEOUT_S + SLACK_S, elapsed_s
    assert text and LONG_REPLY.startswith(text.strip()) and text.strip() != LONG_REPLY
    assert fake_backup.calls == 0
    assert eventually(lambda: fake_slow.abandoned == 1)  # the upstream is stopped too

    # Billed for what was produced (the usage never came: estimated from the text).
    line = wait_access_line(gateway, request_id)
    assert (line["status"], line["stream_outcome"]) == (200, "error")
    assert line["error_code"] == "stream_timeout"
    completion = math.ceil(len(text) / 4)
    assert line["usage_estimated"] is True
    assert (line["input_tokens"], line["output_tokens"]) == (PROMPT_TOKENS, completion)
    expected_usd = (PROMPT_TOKENS * IN_USD + completion * OUT_USD) / 1e6
    assert line["cost_usd"] == pytest.approx(expected_usd)
    after = settled(gateway, before, route)
    output = delta(after, before, "gateway_tokens_total", deployment=dep, kind="output")
    assert output == completion
    # The limit is the gateway's: the deployment did nothing wrong.
    assert after.value(COOLDOWN_METRIC, deployment=dep) == 0
    assert (dep, "cooldown") not in rejected(gateway, route)


def test_stream_timeout_before_first_content_is_a_504_without_fallback(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fake_slow: FakeOpenAI,
    fake_backup: FakeOpenAI,
) -> None:
    """No content by stream_timeout_s (inside the provider's read_s): another deployment's
    stream would start already too old, so none is tried."""
    route, dep = "r-slow-first-token", "steady/slow-first-token"
    fake_slow.script(Behaviour(first_content_delay_s=STEADY_READ_S - 0.5))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=route, messages=ASK, stream=True)
    elapsed_s = time.monotonic() - started
    response = info.value.response
    assert response.status_code == 504, response.text
    validate(response.json(), "ErrorResponse")
    assert info.value.code == "stream_timeout"
    assert STREAM_TIMEOUT_S - 0.5 <= elapsed_s <= STREAM_TIMEOUT_S + SLACK_S, elapsed_s
    assert fake_backup.calls == 0
    assert (dep, "cooldown") not in rejected(gateway, route)


# --- the read loop, in process ------------------------------------------------------------

COMMENT = [b": keep-alive\n", b"\n"]
EVENT = [b"data: {}\n", b"\n"]


class Paced:
    """Line batches as a transport hands them over: `script` of (seconds before, batch),
    then `forever` (if any) again and again."""

    def __init__(
        self,
        script: list[tuple[float, list[bytes]]],
        forever: tuple[float, list[bytes]] | None = None,
    ) -> None:
        self._script = list(script)
        self._forever = forever

    def __aiter__(self) -> Paced:
        return self

    async def __anext__(self) -> list[bytes]:
        if self._script:
            delay_s, batch = self._script.pop(0)
        elif self._forever is not None:
            delay_s, batch = self._forever
        else:
            raise StopAsyncIteration
        await asyncio.sleep(delay_s)
        return batch


async def count_until_error(
    events: EventBatches, consumer_s: float = 0.0
) -> tuple[int, BaseException | None, float]:
    """(event batches seen, the error the iteration ended with, seconds it took)."""
    started, seen = time.perf_counter(), 0
    try:
        async for _ in events:
            seen += 1
            await asyncio.sleep(consumer_s)
    except Exception as error:
        return seen, error, time.perf_counter() - started
    return seen, None, time.perf_counter() - started


def test_comment_only_reads_are_idle() -> None:
    events = EventBatches(Paced([(0.0, EVENT)], forever=(0.02, COMMENT)), idle_s=0.2)
    seen, error, took_s = asyncio.run(count_until_error(events))
    assert seen == 1
    assert isinstance(error, UpstreamTimeoutError) and not isinstance(error, StreamTimeoutError)
    assert 0.2 <= took_s <= 2.0


def test_events_between_comments_keep_a_stream_alive() -> None:
    """Comments and events interleaved, each event inside idle_s: never idle; and the
    consumer's own time (a slow client) is not counted as the upstream's."""
    script = [(0.05, COMMENT if i % 2 else EVENT) for i in range(16)]
    seen, error, _ = asyncio.run(count_until_error(EventBatches(Paced(script), idle_s=0.2)))
    assert (seen, error) == (8, None)
    slow = EventBatches(Paced([(0.0, COMMENT), (0.0, EVENT)] * 3), idle_s=0.1)
    seen, error, _ = asyncio.run(count_until_error(slow, consumer_s=0.3))
    assert (seen, error) == (3, None)


def test_a_steady_stream_ends_at_its_deadline() -> None:
    deadline = time.perf_counter() + 0.3
    events = EventBatches(Paced([], forever=(0.02, EVENT)), idle_s=5.0, deadline=deadline)
    seen, error, took_s = asyncio.run(count_until_error(events))
    assert isinstance(error, StreamTimeoutError) and error.code == "stream_timeout"
    assert seen > 1 and 0.3 <= took_s <= 2.0
