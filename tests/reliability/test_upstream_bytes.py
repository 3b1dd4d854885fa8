"""An upstream's bad bytes are the upstream's fault: invalid UTF-8 through the real gateway.

Every provider (OpenAI, Azure, Anthropic, Gemini) over both HTTP transports (`native`
and `httpx`, one gateway each): bytes that are not UTF-8 before the first content fall
over to the next deployment and cool the bad one down (never a 500); after it, the
client gets an in-band OpenAI-shaped error event and no `[DONE]`, and the access log
says the upstream failed (`stream_outcome: error`), not that the client left. A JSON
answer that is not UTF-8 falls over the same way, and is a 502 only when nothing else
is left. Valid UTF-8 split over reads is not mistaken for bad bytes.

Each case has deployments of its own (`<provider>-<case>`): `cooldown_failures: 1`
cools a deployment down at its first failure, which must not change another case's plan.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.errors import UpstreamUnavailableError
from gateway.transport.sse import INVALID, EventBatches, SSEDecoder
from tests.conftest import ANTHROPIC_KEY, AZURE_KEY, GATEWAY_KEY, GEMINI_KEY, OPENAI_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.azure_fake import FakeAzure
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, FakeServer
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate
from tests.promtext import scrape
from tests.reliability.helpers import delta, requests_settled, stream_until_error, wait_access_line

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ASK = [{"role": "user", "content": "Send me some bytes."}]
PROMPT_TOKENS = math.ceil(len(ASK[0]["content"]) / 4)  # the gateway's estimate: chars / 4
BACKUP = "backup/backup"
BACKUP_REPLY = "backup answer"
TRANSPORTS = ("native", "httpx")
PROVIDERS = ("openai", "azure", "anthropic", "gemini")
MODES = ("stream", "json")
COOLDOWN_METRIC = "gateway_deployment_cooldown_until_timestamp_seconds"

# One SSE event whose data is not UTF-8 (a Latin-1 "é", then bytes no encoding starts with).
BAD_EVENT = b'data: {"text": "caf\xe9 \xff\xfe"}\n\n'
# A JSON answer that is not UTF-8 (status 200, content-type application/json).
BAD_JSON = b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, '
BAD_JSON += b'"message": {"role": "assistant", "content": "caf\xe9"}, "finish_reason": "stop"}]}'
# The event each fake stream sends after some content (paced: one event per read):
# OpenAI role, 2 words; Azure filter, role, 2 words; Anthropic start, block, ping, 2
# deltas; Gemini 3 events of text.
AFTER_CONTENT = {"openai": 3, "azure": 4, "anthropic": 5, "gemini": 3}
UPSTREAM_MODEL = {
    "openai": "gpt-4o-mini",
    "azure": "chat-prod",  # a deployment the fake Azure resource has
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
}
CASES = ("before-stream", "before-json", "after", "split", "shape")
# Valid UTF-8 and JSON, but no chunk an OpenAI client could read (a choice that is a number).
MALFORMED_EVENT = b'data: {"choices": [5]}\n\n'


# --- the gateways -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_backup() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=OPENAI_KEY).start()
    fake.reply = BACKUP_REPLY
    yield fake
    fake.stop()


def deployment_id(provider: str, case: str) -> str:
    return f"{provider}/{case}"


def gateway_config(
    transport: str,
    openai_fake: FakeOpenAI,
    azure: FakeAzure,
    anthropic: FakeAnthropic,
    gemini: FakeGemini,
    backup: FakeOpenAI,
) -> dict[str, Any]:
    timeouts = {"connect_s": 1.0, "read_s": 5.0}

    def provider(kind: str, base_url: str, key: str) -> dict[str, Any]:
        return {"kind": kind, "base_url": base_url, "api_key": key, "timeouts": timeouts}

    def model(name: str, provider_name: str, dep_id: str) -> dict[str, Any]:
        return {
            "name": name,
            "id": dep_id,
            "provider": provider_name,
            "model": UPSTREAM_MODEL.get(provider_name, "gpt-4o-mini"),
            "input_price_per_mtok_usd": 1.0,
            "output_price_per_mtok_usd": 2.0,
            "capabilities": ["stream"],
        }

    models = [model("backup", "backup", BACKUP)]
    routes = []
    for name in PROVIDERS:
        for case in CASES:
            for shape in ("pair", "solo"):
                public = f"{name}-{case}-{shape}"
                models.append(model(public, name, deployment_id(name, f"{case}-{shape}")))
                route = [public, "backup"] if shape == "pair" else [public]
                routes.append({"name": f"r-{public}", "policy": "fallback", "models": route})
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "server": {"request_timeout_s": 20, "upstream_transport": transport},
        "routing": {"cooldown_failures": 1, "cooldown_s": 60, "same_deployment_retries": 0},
        "providers": {
            "openai": provider("openai", f"{openai_fake.base_url}/v1", OPENAI_KEY),
            "azure": provider("azure", azure.base_url, AZURE_KEY),
            "anthropic": provider("anthropic", anthropic.base_url, ANTHROPIC_KEY),
            "gemini": provider("gemini", f"{gemini.base_url}/v1beta", GEMINI_KEY),
            "backup": provider("openai", f"{backup.base_url}/v1", OPENAI_KEY),
        },
        "models": models,
        "routes": routes,
    }


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_azure: FakeAzure,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
    fake_backup: FakeOpenAI,
) -> GatewayProcess:
    return start_gateway(
        gateway_config(
            request.param, fake_openai, fake_azure, fake_anthropic, fake_gemini, fake_backup
        )
    )


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=15
    ) as sdk:
        yield sdk


@pytest.fixture
def fakes(
    fake_openai: FakeOpenAI,
    fake_azure: FakeAzure,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> dict[str, FakeServer]:
    return {
        "openai": fake_openai,
        "azure": fake_azure,
        "anthropic": fake_anthropic,
        "gemini": fake_gemini,
    }


# --- helpers ------------------------------------------------------------------------------


def chat(client: openai.OpenAI, route: str, stream: bool) -> tuple[str, httpx.Headers]:
    """(text, response headers) of a successful call, streamed or not."""
    raw = client.chat.completions.with_raw_response.create(model=route, messages=ASK, stream=stream)
    if not stream:
        return raw.parse().choices[0].message.content or "", raw.headers
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return text, raw.headers


def explain(gateway: GatewayProcess, route: str) -> dict[str, Any]:
    body = {"model": route, "messages": ASK, "stream": True}
    response = httpx.post(f"{gateway.base_url}/route/explain", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_cooled_down(gateway: GatewayProcess, route: str, dep: str) -> None:
    """The next plan of `route` skips `dep`, and says why."""
    plan = explain(gateway, route)
    assert dep not in [c["deployment_id"] for c in plan["ordered"]]
    assert (dep, "cooldown") in [(r["deployment_id"], r["reason"]) for r in plan["rejected"]]


def no_tracebacks(gateway: GatewayProcess) -> None:
    """Bad bytes are an upstream error the gateway handles: never an unhandled exception."""
    log = gateway.log_text()
    assert "Traceback" not in log and "UnicodeDecodeError" not in log


# --- before the commit point --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_invalid_utf8_before_content_falls_over(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fakes: dict[str, FakeServer],
    fake_backup: FakeOpenAI,
    provider: str,
    mode: str,
) -> None:
    stream = mode == "stream"
    bad = fakes[provider]
    case = f"before-{mode}"
    pair, solo = f"r-{provider}-{case}-pair", f"r-{provider}-{case}-solo"
    pair_dep, solo_dep = (deployment_id(provider, f"{case}-{shape}") for shape in ("pair", "solo"))

    def behaviour() -> Behaviour:
        if stream:  # the very first event: before any content, for every provider
            return Behaviour(replace_event=(0, BAD_EVENT))
        return Behaviour(raw_body=BAD_JSON)

    bad.script(behaviour(), behaviour())
    before = scrape(gateway.url)

    # With a next candidate, the client never notices.
    text, headers = chat(client, pair, stream)
    assert text.strip() == BACKUP_REPLY
    assert (headers["x-gateway-deployment"], headers["x-gateway-attempts"]) == (BACKUP, "2")

    # Without one, a 502-class OpenAI-shaped error (not a 500).
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, solo, stream)
    response = info.value.response
    assert response.status_code == 502, response.text
    validate(response.json(), "ErrorResponse")
    assert info.value.code == "upstream_unavailable"
    assert "UTF-8" in response.text or "JSON" in response.text

    assert bad.calls == 2 and bad.violations == []
    assert fake_backup.calls == 1
    after = requests_settled(gateway, before, [pair, solo])
    for dep in (pair_dep, solo_dep):
        outcome = {"deployment": dep, "outcome": "unavailable"}
        assert delta(after, before, "gateway_upstream_requests_total", **outcome) == 1
        assert after.value(COOLDOWN_METRIC, deployment=dep) > time.time()
    assert delta(after, before, "gateway_fallbacks_total", route=pair, reason="unavailable") == 1
    assert_cooled_down(gateway, pair, pair_dep)  # (a solo route would try it anyway: panic mode)
    no_tracebacks(gateway)


# --- after the commit point ---------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_invalid_utf8_after_content_fails_in_band(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fakes: dict[str, FakeServer],
    fake_backup: FakeOpenAI,
    provider: str,
) -> None:
    bad = fakes[provider]
    route, dep = f"r-{provider}-after-pair", deployment_id(provider, "after-pair")
    request_id = f"bytes-{uuid.uuid4().hex}"
    bad.script(Behaviour(replace_event=(AFTER_CONTENT[provider], BAD_EVENT), chunk_delay_s=0.05))
    received, error = stream_until_error(client, route, ASK, request_id)
    # An in-band error event (the SDK stops there: no [DONE] was read), not a cut connection.
    assert not isinstance(error, openai.APIConnectionError)
    assert error.code == "upstream_unavailable" and "UTF-8" in error.message
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    reply = bad.reply  # type: ignore[attr-defined]
    assert text and reply.startswith(text.strip()) and text.strip() != reply
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)
    assert fake_backup.calls == 0  # past the commit point there is no fallback

    # The upstream failed, the client did not leave; what was produced is billed.
    line = wait_access_line(gateway, request_id)
    assert (line["status"], line["stream_outcome"]) == (200, "error")
    assert line["error_code"] == "upstream_unavailable"
    assert line["input_tokens"] > 0 and line["cost_usd"] > 0
    if line["usage_estimated"]:  # no usage came (Gemini's partial usage counts no output)
        assert line["input_tokens"] == PROMPT_TOKENS
        assert line["output_tokens"] == math.ceil(len(text) / 4)
    # Failing after the commit point counts against the deployment's health too.
    assert_cooled_down(gateway, route, dep)
    no_tracebacks(gateway)


def test_invalid_utf8_after_content_ends_without_done(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    """The bytes on the wire: content, then one `data: {"error": ...}` event, then the end."""
    route = "r-openai-after-solo"
    bad = Behaviour(replace_event=(AFTER_CONTENT["openai"], BAD_EVENT), chunk_delay_s=0.05)
    fake_openai.script(bad)
    body = {"model": route, "messages": ASK, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", headers=AUTH, json=body, timeout=10
    ) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_bytes())
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]
    assert b"[DONE]" not in raw
    assert b'"content":"Hello' in raw  # content reached the client first
    last = json.loads(events[-1])
    validate(last, "ErrorResponse")
    assert last["error"]["code"] == "upstream_unavailable"
    assert all(b'"error"' not in e for e in events[:-1])


@pytest.mark.parametrize("provider", ["openai", "azure"])  # the translators passing chunks on
def test_malformed_event_is_an_upstream_error(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fakes: dict[str, FakeServer],
    fake_backup: FakeOpenAI,
    provider: str,
) -> None:
    """A well-formed JSON event of the wrong shape: before the first content it falls
    over (not a 500); after it, the in-band error."""
    bad = fakes[provider]
    bad.script(
        Behaviour(replace_event=(0, MALFORMED_EVENT)),
        Behaviour(replace_event=(AFTER_CONTENT[provider], MALFORMED_EVENT), chunk_delay_s=0.05),
    )
    text, headers = chat(client, f"r-{provider}-shape-pair", stream=True)
    assert text.strip() == BACKUP_REPLY and headers["x-gateway-deployment"] == BACKUP

    received, error = stream_until_error(client, f"r-{provider}-shape-solo", ASK)
    assert not isinstance(error, openai.APIConnectionError)
    assert error.code == "upstream_unavailable" and "malformed" in error.message
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    no_tracebacks(gateway)


@pytest.mark.parametrize(
    "body", [b'{"choices": [5]}', b'{"choices": "x"}', b'{"choices": [], "usage": 7}', b"[1]"]
)
def test_a_non_streamed_answer_of_the_wrong_shape_falls_over(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fakes: dict[str, FakeServer],
    fake_backup: FakeOpenAI,
    body: bytes,
) -> None:
    """Valid JSON that is no completion: an upstream error that falls over, never a 500."""
    fakes["openai"].script(Behaviour(raw_body=body))
    text, headers = chat(client, "r-openai-shape-pair", stream=False)
    assert text.strip() == BACKUP_REPLY and headers["x-gateway-deployment"] == BACKUP
    no_tracebacks(gateway)


# --- valid UTF-8 is not bad bytes ---------------------------------------------------------


def test_multibyte_characters_split_over_reads_pass_intact(
    gateway: GatewayProcess, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """Each event arrives in two reads cut inside a character: the lines are joined
    before they are decoded, so nothing fails and nothing is mangled."""
    content = "Grüße aus café ✓ 日本"
    fake_openai.script(Behaviour(content=content, split_writes_s=0.02))
    text, headers = chat(client, "r-openai-split-solo", stream=True)
    assert text.strip() == content
    assert headers["x-gateway-deployment"] == deployment_id("openai", "split-solo")


# --- the decoder, in process ----------------------------------------------------------------


class Batches:
    """Line batches as a transport hands them over, one per read."""

    def __init__(self, *batches: list[bytes]) -> None:
        self._batches = list(batches)

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[bytes]:
        if not self._batches:
            raise StopAsyncIteration
        return self._batches.pop(0)


async def drain(events: EventBatches) -> tuple[list[list[str]], BaseException | None]:
    """The data of each batch of events, and what the iteration ended with."""
    seen: list[list[str]] = []
    try:
        async for batch in events:
            seen.append([e.data for e in batch])
    except Exception as error:
        return seen, error
    return seen, None


@pytest.mark.parametrize(
    "line",
    [
        b'data: {"a": "\xff"}\n',
        b"data:\xe9\n",
        b"event: caf\xe9\n",
        b'data: {"a": "\xed\xa0\x80"}\n',
    ],
    ids=["data", "data-no-space", "event-name", "surrogate"],
)
def test_events_before_bad_bytes_come_out_then_the_error(line: bytes) -> None:
    """What arrived before the bad line (in the same read too) is relayed; then one
    upstream error, never a UnicodeDecodeError; nothing after the bad line is used."""
    events = EventBatches(
        Batches(
            [b"data: 1\n", b"\n"],
            [b"data: 2\n", b"\n", line, b"\n", b"data: 3\n", b"\n"],
            [b"data: 4\n", b"\n"],
        )
    )
    seen, error = asyncio.run(drain(events))
    assert seen == [["1"], ["2"]]
    assert isinstance(error, UpstreamUnavailableError) and "UTF-8" in error.message
    assert events.failure is error


def test_bad_bytes_first_in_a_read_fail_at_once() -> None:
    seen, error = asyncio.run(drain(EventBatches(Batches([b"data: \xc3\x28\n", b"\n"]))))
    assert seen == [] and isinstance(error, UpstreamUnavailableError)


def test_decoder_marks_the_bad_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_line(b"data: ok\n") is None
    assert decoder.feed_line(b"data: \xff\n") is INVALID
    assert isinstance(decoder.error, UpstreamUnavailableError)
    fresh = SSEDecoder()
    assert fresh.feed_line("data: café ✓\n".encode()) is None and fresh.error is None
