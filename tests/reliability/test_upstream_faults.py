"""Upstream faults through the real gateway: what the client gets, what is cooled down,
what /metrics counts and what is billed, for every fault class, with and without a
next candidate, JSON and SSE.

Each fault case has deployments of its own (`a/<case>-<mode>-<shape>`), so one case's
cooldown never changes another's plan. `cooldown_failures: 1` makes every health
failure observable at once; `same_deployment_retries: 0` keeps the attempt counts exact
(retries in place are covered in tests/features/test_routing.py).
"""

from __future__ import annotations

import json
import math
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY
from tests.fakes.anthropic_fake import AnthropicBehaviour, FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, FakeServer, free_port
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate
from tests.promtext import Scrape, eventually, scrape
from tests.reliability.helpers import (
    delta,
    own_fake,
    requests_settled,
    stream_until_error,
    wait_access_line,
)

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ASK = [{"role": "user", "content": "Fault me."}]
PROMPT_TOKENS = math.ceil(len(ASK[0]["content"]) / 4)  # the gateway's estimate: chars / 4
COOLDOWN_S = 60.0
READ_S = 1.0  # the failing provider's first-byte / idle timeout
IN_A, OUT_A = 1.0, 2.0  # USD per million tokens, failing deployments
IN_B, OUT_B = 3.0, 15.0  # the healthy backup
BACKUP = "b/b-ok"
MODES = ("json", "stream")
COOLDOWN_METRIC = "gateway_deployment_cooldown_until_timestamp_seconds"
LONG_REPLY = " ".join(f"w{i}" for i in range(40))


@dataclass(frozen=True)
class Fakes:
    a: FakeOpenAI
    b: FakeOpenAI
    trap: FakeOpenAI  # a redirect's target: must never be called
    ant: FakeAnthropic


Script = Callable[[Fakes], Behaviour]


@dataclass(frozen=True)
class Fault:
    """One upstream fault and what a client must get when no other candidate exists."""

    id: str
    script: Script | None  # None: the provider is unreachable (connection refused)
    provider: str = "a"  # a: fake OpenAI, ant: fake Anthropic, dead: nothing listens
    modes: tuple[str, ...] = MODES
    status: int = 502
    code: str = "upstream_unavailable"
    outcome: str = "unavailable"  # gateway_upstream_requests_total / gateway_fallbacks_total
    cooldown_s: float = COOLDOWN_S
    retry_after: str | None = None
    upstream_hung_up: bool = False  # the gateway must close the timed-out upstream request


def redirect(f: Fakes) -> Behaviour:
    return Behaviour(status=307, headers={"location": f"{f.trap.base_url}/v1/chat/completions"})


ERROR_200 = {"error": {"message": "The server is overloaded.", "type": "server_error"}}
KEY_401 = {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}", "type": "x"}}

FAULTS = [
    Fault("500", lambda f: Behaviour(status=500)),
    Fault("502", lambda f: Behaviour(status=502)),
    Fault("503", lambda f: Behaviour(status=503)),
    Fault("529-anthropic", lambda f: Behaviour(status=529), provider="ant"),
    Fault(
        "429-retry-after",
        lambda f: Behaviour(status=429, headers={"retry-after": "7"}),
        status=429,
        code="rate_limit_exceeded",
        outcome="rate_limited",
        cooldown_s=7.0,  # the provider said when: cooled down exactly that long
        retry_after="7",
    ),
    Fault(
        "429-bare",
        lambda f: Behaviour(status=429),
        status=429,
        code="rate_limit_exceeded",
        outcome="rate_limited",
    ),
    Fault("refused", None, provider="dead"),
    Fault(
        "hang-before-headers",
        lambda f: Behaviour(hang_s=5),
        status=504,
        code="upstream_timeout",
        outcome="timeout",
        upstream_hung_up=True,
    ),
    Fault(
        "hang-mid-body",
        lambda f: Behaviour(stall_body_s=5),
        modes=("json",),
        status=504,
        code="upstream_timeout",
        outcome="timeout",
        upstream_hung_up=True,
    ),
    Fault("malformed-json-200", lambda f: Behaviour(raw_body=b'{"id": "x", "choices": [{')),
    Fault("error-body-200", lambda f: Behaviour(raw_body=json.dumps(ERROR_200).encode())),
    Fault("redirect", redirect),
    Fault(
        "401-our-key",
        lambda f: Behaviour(status=401, body=KEY_401),
        code="upstream_auth_failed",
        outcome="auth_failed",
    ),
    Fault("dies-before-content", lambda f: Behaviour(drop_after_chunks=1), modes=("stream",)),
    Fault(
        "malformed-sse-before-content",
        lambda f: Behaviour(replace_event=(1, b"data: {not json\n\n")),
        modes=("stream",),
    ),
]
FAULT_CASES = [(fault, mode) for fault in FAULTS for mode in fault.modes]


@dataclass(frozen=True)
class LateFault:
    """A stream failure after the commit point (content already reached the client).

    Paced: events that arrive in one read are checked together before the commit, so
    a fault in the same read as the first content still falls over (nothing was sent).
    """

    id: str
    script: Callable[[], Behaviour]
    provider: str = "a"


LATE_FAULTS = [
    LateFault("dies-after-content", lambda: Behaviour(drop_after_chunks=3, chunk_delay_s=0.05)),
    LateFault("stalls-after-content", lambda: Behaviour(stall_after_chunks=(3, 5.0))),
    LateFault(
        "malformed-sse-after-content",
        lambda: Behaviour(replace_event=(3, b"data: {broken\n\n"), chunk_delay_s=0.05),
    ),
    LateFault(
        "error-event-after-content",
        lambda: Behaviour(
            replace_event=(3, b"data: " + json.dumps(ERROR_200).encode() + b"\n\n"),
            chunk_delay_s=0.05,
        ),
    ),
    # message_start, content_block_start, ping, two text deltas, then `error: overloaded`
    LateFault(
        "anthropic-overloaded-after-content",
        lambda: AnthropicBehaviour(error_event_after=5, chunk_delay_s=0.05),
        provider="ant",
    ),
]


# --- the gateway --------------------------------------------------------------------------


def deployment(fault_id: str, mode: str, shape: str, provider: str) -> tuple[str, str]:
    """(public model name, deployment id) of one case's failing deployment."""
    name = f"{fault_id}-{mode}-{shape}"
    return name, f"{provider}/{name}"


def model(name: str, provider: str, in_usd: float, out_usd: float) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "model": name,
        "input_price_per_mtok_usd": in_usd,
        "output_price_per_mtok_usd": out_usd,
        "max_output_tokens": 1024,
    }


def faults_config(f: Fakes) -> dict[str, Any]:
    def provider(kind: str, base_url: str, key: str) -> dict[str, Any]:
        timeouts = {"connect_s": 1.0, "read_s": READ_S}
        return {"kind": kind, "base_url": base_url, "api_key": key, "timeouts": timeouts}

    models = [model("b-ok", "b", IN_B, OUT_B), model("disc", "a", IN_A, OUT_A)]
    routes = []
    cases = [(x.id, m, x.provider) for x, m in FAULT_CASES]
    cases += [(x.id, "stream", x.provider) for x in LATE_FAULTS]
    cases += [("slow", m, "a") for m in MODES]
    for fault_id, mode, provider_name in cases:
        for shape in ("solo", "pair"):
            name, _ = deployment(fault_id, mode, shape, provider_name)
            models.append(model(name, provider_name, IN_A, OUT_A))
            fallback = [name, "b-ok"] if shape == "pair" else [name]
            routes.append({"name": f"{shape}-{fault_id}-{mode}", "models": fallback})
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "server": {"request_timeout_s": 10},
        "routing": {
            "cooldown_failures": 1,
            "cooldown_s": COOLDOWN_S,
            "same_deployment_retries": 0,
        },
        "providers": {
            "a": provider("openai", f"{f.a.base_url}/v1", OPENAI_KEY),
            "b": provider("openai", f"{f.b.base_url}/v1", OPENAI_KEY),
            "ant": provider("anthropic", f.ant.base_url, ANTHROPIC_KEY),
            "dead": provider("openai", f"http://127.0.0.1:{free_port()}/v1", OPENAI_KEY),
        },
        "models": models,
        "routes": routes,
    }


@pytest.fixture(scope="module")
def fake_a() -> Iterator[FakeOpenAI]:
    yield from own_fake(LONG_REPLY)


@pytest.fixture(scope="module")
def fake_b() -> Iterator[FakeOpenAI]:
    yield from own_fake("backup answer")


@pytest.fixture(scope="module")
def fake_trap() -> Iterator[FakeOpenAI]:
    yield from own_fake("you followed a redirect")


@pytest.fixture
def fakes(
    fake_a: FakeOpenAI, fake_b: FakeOpenAI, fake_trap: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> Fakes:
    return Fakes(fake_a, fake_b, fake_trap, fake_anthropic)


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_a: FakeOpenAI,
    fake_b: FakeOpenAI,
    fake_trap: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> GatewayProcess:
    return start_gateway(faults_config(Fakes(fake_a, fake_b, fake_trap, fake_anthropic)))


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


# --- helpers ------------------------------------------------------------------------------


def cost(prompt: int, completion: int, in_usd: float, out_usd: float) -> float:
    return (prompt * in_usd + completion * out_usd) / 1e6


def attempts(after: Scrape, before: Scrape, dep: str, outcome: str | None = None) -> float:
    """Upstream attempts on `dep` between two scrapes, of one outcome or all."""
    labels = {"deployment": dep} | ({"outcome": outcome} if outcome else {})
    return delta(after, before, "gateway_upstream_requests_total", **labels)


def fake_for(f: Fakes, provider: str) -> FakeServer | None:
    return {"a": f.a, "ant": f.ant, "dead": None}[provider]


def chat(client: openai.OpenAI, route: str, stream: bool) -> tuple[str, httpx.Headers]:
    """(text, response headers) of a successful call, streamed or not."""
    raw = client.chat.completions.with_raw_response.create(model=route, messages=ASK, stream=stream)
    if not stream:
        return raw.parse().choices[0].message.content or "", raw.headers
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return text, raw.headers


def assert_cooling_down(s: Scrape, deployment_id: str, started_s: float, cooldown_s: float) -> None:
    until = s.value(COOLDOWN_METRIC, deployment=deployment_id)
    assert started_s + cooldown_s - 1 <= until <= time.time() + cooldown_s + 1, (
        deployment_id,
        until - time.time(),
    )


def explain(gateway: GatewayProcess, route: str) -> dict[str, Any]:
    body = {"model": route, "messages": ASK}
    response = httpx.post(f"{gateway.base_url}/route/explain", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- faults before the commit point -------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "mode"), FAULT_CASES, ids=[f"{x.id}-{m}" for x, m in FAULT_CASES]
)
def test_fault_before_commit(
    gateway: GatewayProcess, client: openai.OpenAI, fakes: Fakes, fault: Fault, mode: str
) -> None:
    stream = mode == "stream"
    failing = fake_for(fakes, fault.provider)
    _, pair_id = deployment(fault.id, mode, "pair", fault.provider)
    _, solo_id = deployment(fault.id, mode, "solo", fault.provider)
    pair, solo = f"pair-{fault.id}-{mode}", f"solo-{fault.id}-{mode}"
    before, started_s = scrape(gateway.url), time.time()
    if fault.script is not None:
        assert failing is not None
        failing.script(fault.script(fakes), fault.script(fakes))

    # With a next candidate, the client never notices.
    text, headers = chat(client, pair, stream)
    assert text.strip() == fakes.b.reply
    assert (headers["x-gateway-deployment"], headers["x-gateway-attempts"]) == (BACKUP, "2")

    # Without one, an OpenAI-shaped error whose status makes the SDK do the right thing.
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, solo, stream)
    response = info.value.response
    assert response.status_code == fault.status, response.text
    validate(response.json(), "ErrorResponse")
    assert info.value.code == fault.code
    assert response.headers.get("retry-after") == fault.retry_after
    assert OPENAI_KEY not in response.text and ANTHROPIC_KEY not in response.text

    # Each failing deployment was tried exactly once; a redirect was not followed.
    if failing is not None:
        assert failing.calls == 2 and failing.violations == []
    assert fakes.b.calls == 1 and fakes.trap.calls == 0
    if fault.upstream_hung_up:
        assert failing is not None
        assert eventually(lambda: failing.abandoned == 2)  # nobody waits for it any more

    after = requests_settled(gateway, before, [pair, solo])
    for dep in (pair_id, solo_id):
        assert attempts(after, before, dep) == 1
        assert attempts(after, before, dep, fault.outcome) == 1
        assert_cooling_down(after, dep, started_s, fault.cooldown_s)
        assert delta(after, before, "gateway_cost_usd_total", deployment=dep) == 0
        assert delta(after, before, "gateway_tokens_total", deployment=dep) == 0
    assert delta(after, before, "gateway_fallbacks_total", route=pair, reason=fault.outcome) == 1
    assert delta(after, before, "gateway_fallbacks_total", route=solo) == 0
    served = {"route": pair, "deployment": BACKUP, "status_class": "2xx"}
    assert delta(after, before, "gateway_requests_total", **served) == 1
    # filed under the deployment that failed it (the only one tried), not "none"
    failed = {"route": solo, "deployment": solo_id, "status_class": f"{fault.status // 100}xx"}
    assert delta(after, before, "gateway_requests_total", **failed) == 1
    backup_cost = delta(after, before, "gateway_cost_usd_total", deployment=BACKUP)
    assert backup_cost == pytest.approx(cost(11, 7, IN_B, OUT_B), rel=1e-9)

    # The next plan skips the cooled-down deployment, and says so.
    plan = explain(gateway, pair)
    assert [c["deployment_id"] for c in plan["ordered"]] == [BACKUP]
    assert [(r["deployment_id"], r["reason"]) for r in plan["rejected"]] == [(pair_id, "cooldown")]


@pytest.mark.parametrize("mode", MODES)
def test_slow_upstream_within_its_timeout_is_waited_for(
    gateway: GatewayProcess, client: openai.OpenAI, fakes: Fakes, mode: str
) -> None:
    """A slow first token (or a slow JSON answer) inside the read timeout is not a fault."""
    stream = mode == "stream"
    route, (_, dep) = f"pair-slow-{mode}", deployment("slow", mode, "pair", "a")
    slow = Behaviour(first_content_delay_s=0.4) if stream else Behaviour(delay_s=0.4)
    fakes.a.script(slow)
    before = scrape(gateway.url)
    text, headers = chat(client, route, stream)
    assert text.strip() == fakes.a.reply and headers["x-gateway-deployment"] == dep
    assert fakes.b.calls == 0
    after = requests_settled(gateway, before, [route])
    assert after.value(COOLDOWN_METRIC, deployment=dep) == 0
    assert attempts(after, before, dep) == attempts(after, before, dep, "ok") == 1
    if stream:  # the wait shows in time-to-first-token, not as an error
        ttft = delta(after, before, "gateway_time_to_first_token_seconds_sum", deployment=dep)
        assert ttft >= 0.4


# --- faults after the commit point --------------------------------------------------------


@pytest.mark.parametrize("fault", LATE_FAULTS, ids=[x.id for x in LATE_FAULTS])
def test_stream_fault_after_commit_fails_in_band_and_bills(
    gateway: GatewayProcess, client: openai.OpenAI, fakes: Fakes, fault: LateFault
) -> None:
    failing = fake_for(fakes, fault.provider)
    assert failing is not None
    route, (_, dep) = (
        f"pair-{fault.id}-stream",
        deployment(fault.id, "stream", "pair", fault.provider),
    )
    request_id = f"late-{uuid.uuid4().hex}"
    failing.script(fault.script())
    before = scrape(gateway.url)
    started_s = time.time()
    received, error = stream_until_error(client, route, ASK, request_id)
    # An in-band error event, not a dropped connection, and never a clean or synthesized end.
    assert not isinstance(error, openai.APIConnectionError)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    reply = failing.reply  # type: ignore[attr-defined]
    assert text and reply.startswith(text.strip()) and text.strip() != reply
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)
    assert fakes.b.calls == 0  # past the commit point there is no fallback

    # The provider's usage never came: what was produced is billed, marked estimated.
    line = wait_access_line(gateway, request_id)
    completion = math.ceil(len(text) / 4)
    assert (line["status"], line["stream_outcome"], line["usage_estimated"]) == (200, "error", True)
    assert (line["input_tokens"], line["output_tokens"]) == (PROMPT_TOKENS, completion)
    after = requests_settled(gateway, before, [route])
    assert delta(after, before, "gateway_usage_estimated_requests_total", deployment=dep) == 1
    output = delta(after, before, "gateway_tokens_total", deployment=dep, kind="output")
    assert output == completion
    spent = delta(after, before, "gateway_cost_usd_total", deployment=dep)
    assert spent == pytest.approx(cost(PROMPT_TOKENS, completion, IN_A, OUT_A), rel=1e-9)
    # Failing after the commit point still counts against the deployment's health.
    assert_cooling_down(after, dep, started_s, COOLDOWN_S)


# --- client disconnects -------------------------------------------------------------------


@dataclass(frozen=True)
class Disconnect:
    id: str
    stream: bool
    behaviour: Callable[[], Behaviour]
    hang_up_after: bytes | None  # None: once the upstream hangs or stalls
    status: int  # what the access log records
    produced_output: bool


DISCONNECTS = [
    Disconnect("json-before-headers", False, lambda: Behaviour(hang_s=10), None, 499, False),
    Disconnect("json-mid-body", False, lambda: Behaviour(stall_body_s=10), None, 499, False),
    Disconnect(
        "stream-before-first-token",
        True,
        lambda: Behaviour(first_content_delay_s=10),
        None,
        499,
        False,
    ),
    Disconnect(
        "stream-after-content", True, lambda: Behaviour(chunk_delay_s=0.3), b"w1 ", 200, True
    ),
]


def raw_request(gateway: GatewayProcess, body: dict[str, Any], request_id: str) -> socket.socket:
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gateway.port}\r\n"
        f"Authorization: Bearer {GATEWAY_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"X-Request-Id: {request_id}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = sock.recv(4096)
        assert data, f"the gateway closed before {marker!r}: {received!r}"
        received += data
    return received


@pytest.mark.parametrize("case", DISCONNECTS, ids=[x.id for x in DISCONNECTS])
def test_client_disconnect_cancels_upstream_within_a_second_and_bills(
    gateway: GatewayProcess, fakes: Fakes, case: Disconnect
) -> None:
    dep, request_id = "a/disc", f"disc-{uuid.uuid4().hex}"
    behaviour = case.behaviour()
    fakes.a.script(behaviour)
    before = scrape(gateway.url)
    body = {"model": "disc", "messages": ASK, "stream": case.stream}
    sock = raw_request(gateway, body, request_id)
    try:
        if case.hang_up_after is None:
            assert eventually(lambda: behaviour.stalled)  # the upstream is mid-work
        else:
            read_until(sock, case.hang_up_after)
    finally:
        sock.close()
    closed = time.monotonic()
    assert eventually(lambda: fakes.a.abandoned == 1, timeout_s=3)
    assert time.monotonic() - closed <= 1.0  # cancelled at once, not at the upstream's end

    line = wait_access_line(gateway, request_id)
    assert (line["status"], line["stream_outcome"]) == (case.status, "client_disconnect")
    assert line["usage_estimated"] is True and line["input_tokens"] == PROMPT_TOKENS
    assert (line["output_tokens"] > 0) is case.produced_output
    after = scrape(gateway.url)
    assert delta(after, before, "gateway_usage_estimated_requests_total", deployment=dep) == 1
    tokens = {
        kind: delta(after, before, "gateway_tokens_total", deployment=dep, kind=kind)
        for kind in ("input", "output")
    }
    assert tokens == {"input": PROMPT_TOKENS, "output": line["output_tokens"]}
    expected = cost(PROMPT_TOKENS, line["output_tokens"], IN_A, OUT_A)
    assert delta(after, before, "gateway_cost_usd_total", deployment=dep) == pytest.approx(expected)
    # The client left: the deployment did nothing wrong and is not cooled down.
    assert after.value(COOLDOWN_METRIC, deployment=dep) == 0
    assert attempts(after, before, dep) == attempts(after, before, dep, "ok")
