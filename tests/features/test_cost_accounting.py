"""Exact cost accounting through the real server: the `x-gateway-cost-usd` header and the
cost counters in /metrics equal prices x the usage the fake upstream reported, for
plain, streamed, fallback, cached-input and usage-less (estimated) requests."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess
from tests.promtext import Scrape, scrape, scrape_until

KEY_A, KEY_B = "gw-acct-key-a-0123456789", "gw-acct-key-b-0123456789"
IN_A, OUT_A, CACHED_A = 1.25, 10.0, 0.125  # USD per million tokens
IN_B, OUT_B = 3.0, 15.0
IN_EMB = 0.02
DEP_A, DEP_B, DEP_EMB = "acct/model-a", "acct/model-b", "acct/embed-x"
ASK = [{"role": "user", "content": "What does this cost?"}]


def cost(prompt: int, completion: int, in_usd: float, out_usd: float, **cached: float) -> float:
    """The price list applied by hand: cached input tokens at their own rate."""
    cached_tokens = int(cached.get("tokens", 0))
    cached_usd = cached.get("usd", in_usd)
    return (
        (prompt - cached_tokens) * in_usd + cached_tokens * cached_usd + completion * out_usd
    ) / 1e6


def accounting_config(fake: FakeOpenAI) -> dict[str, Any]:
    def model(name: str, upstream: str, in_usd: float, out_usd: float, **extra: Any) -> Any:
        return {
            "name": name,
            "provider": "acct",
            "model": upstream,
            "input_price_per_mtok_usd": in_usd,
            "output_price_per_mtok_usd": out_usd,
            **extra,
        }

    return {
        "auth": {
            "mode": "keys",
            "keys": [
                {"name": "svc-a", "key": KEY_A, "team": "team-a"},
                {"name": "svc-b", "key": KEY_B, "team": "team-b"},
            ],
        },
        "server": {"request_timeout_s": 10, "access_log": False},
        "routing": {"cooldown_failures": 1000},
        "providers": {
            "acct": {
                "kind": "openai",
                "base_url": f"{fake.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": {"connect_s": 1.0, "read_s": 2.0},
            }
        },
        "models": [
            model("m-a", "model-a", IN_A, OUT_A, cached_input_price_per_mtok_usd=CACHED_A),
            model("m-b", "model-b", IN_B, OUT_B),
            model("emb", "embed-x", IN_EMB, 0.0, mode="embedding"),
        ],
        "routes": [
            {"name": "chain", "policy": "fallback", "models": ["m-a", "m-b"]},
            {"name": "cached", "policy": "fallback", "models": ["m-a"], "cache": {"enabled": True}},
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(accounting_config(fake_openai))


def client(gateway: GatewayProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def header_cost(raw: Any) -> float:
    return float(raw.headers["x-gateway-cost-usd"])


def spent(s: Scrape, deployment: str) -> float:
    return s.value("gateway_cost_usd_total", deployment=deployment)


def settled(gateway: GatewayProcess, before: Scrape, deployment: str, expected: float) -> Scrape:
    """The scrape once `expected` more USD were counted for `deployment` (streams settle
    just after their last byte)."""

    def done(s: Scrape) -> bool:
        return math.isclose(spent(s, deployment) - spent(before, deployment), expected)

    after = scrape_until(gateway.url, done)
    got = spent(after, deployment) - spent(before, deployment)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    return after


def stream_text(c: openai.OpenAI, model: str = "m-a") -> str:
    stream = c.chat.completions.create(model=model, messages=ASK, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def test_non_streamed_request_costs_exactly_its_usage(gateway: GatewayProcess) -> None:
    before = scrape(gateway.url)
    raw = client(gateway).chat.completions.with_raw_response.create(model="m-a", messages=ASK)
    expected = cost(11, 7, IN_A, OUT_A)
    assert (raw.headers["x-gateway-tokens-input"], raw.headers["x-gateway-tokens-output"]) == (
        "11",
        "7",
    )
    assert header_cost(raw) == pytest.approx(expected, abs=1e-10)  # printed to 1e-10 USD
    after = settled(gateway, before, DEP_A, expected)
    tokens = {
        kind: after.value("gateway_tokens_total", deployment=DEP_A, kind=kind)
        - before.value("gateway_tokens_total", deployment=DEP_A, kind=kind)
        for kind in ("input", "output", "cached_input")
    }
    assert tokens == {"input": 11, "output": 7, "cached_input": 0}
    key_spent = after.value("gateway_key_cost_usd_total", key="svc-a", team="team-a")
    assert key_spent - before.value("gateway_key_cost_usd_total", key="svc-a") == pytest.approx(
        expected, rel=1e-12
    )


def test_streamed_requests_cost_exactly_their_usage(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_openai, "prompt_tokens", 1234)
    monkeypatch.setattr(fake_openai, "completion_tokens", 567)
    before = scrape(gateway.url)
    c = client(gateway)
    for _ in range(3):
        assert stream_text(c).strip() == fake_openai.reply
    settled(gateway, before, DEP_A, 3 * cost(1234, 567, IN_A, OUT_A))
    assert fake_openai.violations == []


def test_fallback_bills_the_deployment_that_answered(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    before = scrape(gateway.url)
    fake_openai.script(Behaviour(status=500))
    raw = client(gateway).chat.completions.with_raw_response.create(model="chain", messages=ASK)
    assert raw.headers["x-gateway-deployment"] == DEP_B
    assert header_cost(raw) == pytest.approx(cost(11, 7, IN_B, OUT_B), abs=1e-10)
    fake_openai.script(Behaviour(status=500))  # the stream falls over before its first byte
    assert stream_text(client(gateway), "chain").strip() == fake_openai.reply
    after = settled(gateway, before, DEP_B, 2 * cost(11, 7, IN_B, OUT_B))
    assert spent(after, DEP_A) == spent(before, DEP_A)  # the failed attempts cost nothing
    fallbacks = after.value("gateway_fallbacks_total", route="chain", reason="unavailable")
    assert fallbacks - before.value("gateway_fallbacks_total", route="chain") == 2


def test_cached_input_tokens_are_priced_as_cached(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_openai, "prompt_tokens", 2000)
    monkeypatch.setattr(fake_openai, "cached_tokens", 1536)
    expected = cost(2000, 7, IN_A, OUT_A, tokens=1536, usd=CACHED_A)
    assert expected < cost(2000, 7, IN_A, OUT_A)
    before = scrape(gateway.url)
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(model="m-a", messages=ASK)
    assert header_cost(raw) == pytest.approx(expected, abs=1e-10)
    assert stream_text(c).strip() == fake_openai.reply
    after = settled(gateway, before, DEP_A, 2 * expected)
    cached = after.value("gateway_tokens_total", deployment=DEP_A, kind="cached_input")
    assert cached - before.value("gateway_tokens_total", deployment=DEP_A, kind="cached_input") == (
        2 * 1536
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_missing_usage_is_estimated_and_counted_as_such(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, stream: bool
) -> None:
    before = scrape(gateway.url)
    fake_openai.script(Behaviour(usage=False))
    prompt_tokens = math.ceil(len(ASK[0]["content"]) / 4)
    if stream:
        text = stream_text(client(gateway))  # every word arrives with a trailing space
        completion_tokens = math.ceil(len(text) / 4)
    else:
        raw = client(gateway).chat.completions.with_raw_response.create(model="m-a", messages=ASK)
        completion_tokens = math.ceil(len(fake_openai.reply) / 4)
        headers = (raw.headers["x-gateway-tokens-input"], raw.headers["x-gateway-tokens-output"])
        assert headers == (str(prompt_tokens), str(completion_tokens))
        assert header_cost(raw) == pytest.approx(
            cost(prompt_tokens, completion_tokens, IN_A, OUT_A), abs=1e-10
        )
    after = settled(gateway, before, DEP_A, cost(prompt_tokens, completion_tokens, IN_A, OUT_A))
    estimated = after.value("gateway_usage_estimated_requests_total", deployment=DEP_A)
    assert estimated - before.value("gateway_usage_estimated_requests_total", deployment=DEP_A) == 1


def test_embeddings_cost_their_input_tokens(gateway: GatewayProcess) -> None:
    before = scrape(gateway.url)
    raw = client(gateway).embeddings.with_raw_response.create(model="emb", input=["a", "b"])
    expected = 5 * IN_EMB / 1e6  # the fake reports prompt_tokens=5
    assert header_cost(raw) == pytest.approx(expected, abs=1e-10)
    settled(gateway, before, DEP_EMB, expected)


def test_spend_is_counted_per_key_and_team(gateway: GatewayProcess) -> None:
    before = scrape(gateway.url)
    for key, times in ((KEY_A, 2), (KEY_B, 3)):
        for _ in range(times):
            client(gateway, key).chat.completions.create(model="m-b", messages=ASK)
    after = settled(gateway, before, DEP_B, 5 * cost(11, 7, IN_B, OUT_B))
    for name, team, times in (("svc-a", "team-a", 2), ("svc-b", "team-b", 3)):
        delta = after.value("gateway_key_cost_usd_total", key=name, team=team) - before.value(
            "gateway_key_cost_usd_total", key=name, team=team
        )
        assert delta == pytest.approx(times * cost(11, 7, IN_B, OUT_B), rel=1e-12)


def test_failed_requests_cost_nothing(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    before = scrape(gateway.url)
    fake_openai.script(Behaviour(status=500), Behaviour(status=500))
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "chain", "messages": ASK},
        headers={"authorization": f"Bearer {KEY_A}"},
    )
    assert response.status_code == 502
    assert "x-gateway-cost-usd" not in response.headers
    after = scrape(gateway.url)
    assert spent(after, DEP_A) + spent(after, DEP_B) == spent(before, DEP_A) + spent(before, DEP_B)


def test_cache_hit_costs_nothing_and_counts_what_it_saved(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    before = scrape(gateway.url)
    ask = [{"role": "user", "content": "Cache this answer, please."}]
    c = client(gateway)
    miss = c.chat.completions.with_raw_response.create(model="cached", messages=ask)
    hit = c.chat.completions.with_raw_response.create(model="cached", messages=ask)
    assert fake_openai.calls == 1
    assert (miss.headers["x-gateway-cache"], hit.headers["x-gateway-cache"]) == ("MISS", "HIT")
    expected = cost(11, 7, IN_A, OUT_A)
    assert header_cost(miss) == pytest.approx(expected, abs=1e-10)
    assert header_cost(hit) == 0
    assert float(hit.headers["x-gateway-cost-saved-usd"]) == pytest.approx(expected, abs=1e-10)
    settled(gateway, before, DEP_A, expected)  # only the miss was paid for
    after = scrape_until(
        gateway.url,
        lambda s: (
            s.value("gateway_requests_total", route="cached")
            == (before.value("gateway_requests_total", route="cached") + 2)
        ),
    )
    saved = after.value("gateway_cache_saved_usd_total") - before.value(
        "gateway_cache_saved_usd_total"
    )
    assert saved == pytest.approx(expected, rel=1e-12)
    for result in ("hit", "miss"):
        lookups = after.value("gateway_cache_requests_total", result=result)
        assert lookups - before.value("gateway_cache_requests_total", result=result) == 1
    hits = after.value("gateway_requests_total", route="cached", cache="hit")
    assert hits - before.value("gateway_requests_total", route="cached", cache="hit") == 1
