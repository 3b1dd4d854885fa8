"""The response cache through real gateways, a real redis-server and the openai SDK."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import TOOL_ARGUMENTS, FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.redis_cluster import RedisBackend, backend_of

TEAM_A2_KEY = "gw-test-key-team-a-second"
TEAM_B_KEY = "gw-test-key-team-b-000000"
ADMIN_KEY = "gw-admin-key-cache-tests"
MAX_ENTRY_BYTES = 4096
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,  # the SDK's stream helper parses only strict tools' arguments
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def cache_config(
    fake: FakeOpenAI, backend: RedisBackend | None, enabled: bool = True
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "auth": {
            "mode": "keys",
            "keys": [
                {"name": "a1", "key": GATEWAY_KEY, "team": "a"},
                {"name": "a2", "key": TEAM_A2_KEY, "team": "a"},
                {"name": "b1", "key": TEAM_B_KEY, "team": "b"},
            ],
            "admin_keys": [ADMIN_KEY],
        },
        "server": {"request_timeout_s": 10},
        "cache": {"enabled": enabled, "max_entry_bytes": MAX_ENTRY_BYTES},
        "providers": {
            "fake": {"kind": "openai", "base_url": f"{fake.base_url}/v1", "api_key": OPENAI_KEY}
        },
        "models": [
            {
                "name": "gpt-test",
                "provider": "fake",
                "model": "gpt-4o-mini",
                "input_price_per_mtok_usd": 0.15,
                "output_price_per_mtok_usd": 0.6,
            }
        ],
        "routes": [
            {"name": "no-cache-route", "models": ["gpt-test"], "cache": {"enabled": False}},
            {"name": "short-ttl", "models": ["gpt-test"], "cache": {"ttl_s": 1}},
            {"name": "cached", "models": ["gpt-test"], "cache": {"enabled": True}},
        ],
    }
    if backend is not None:
        config["redis"] = backend.section(
            socket_timeout_s=0.1, connect_timeout_s=0.1, operation_deadline_s=0.2
        )
    return config


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def gateway(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
) -> GatewayProcess:
    """On one Redis, then on a Redis Cluster (entries spread over its masters)."""
    return start_gateway(cache_config(fake_openai, backend_of(request)))


@pytest.fixture(scope="module")
def standalone_gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, redis_server: RedisServer
) -> GatewayProcess:
    """On the `redis_server` that the outage tests stop and freeze."""
    return start_gateway(cache_config(fake_openai, RedisBackend("standalone", redis_server.url)))


@pytest.fixture(scope="module")
def memory_gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    """No Redis; caching off globally, on for the `cached` route only."""
    return start_gateway(cache_config(fake_openai, None, enabled=False))


_clients: list[openai.OpenAI] = []  # closed after each test (their pooled sockets too)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client_for(gateway: GatewayProcess, key: str = GATEWAY_KEY) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    _clients.append(client)
    return client


def ask() -> list[dict[str, Any]]:
    """A prompt no other test sends: tests never see each other's entries."""
    return [{"role": "user", "content": f"What is new? {uuid.uuid4().hex}"}]


def chat(
    client: openai.OpenAI,
    messages: list[dict[str, Any]],
    model: str = "gpt-test",
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[httpx.Headers, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, extra_headers=headers, **params
    )
    return raw.headers, raw.parse()


def streamed(
    client: openai.OpenAI, messages: list[dict[str, Any]], **params: Any
) -> tuple[httpx.Headers, Any]:
    """A stream with usage, accumulated by the SDK's own stream state into one completion."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **params,
    )
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(
        input_tools=params.get("tools", openai.omit)
    )
    for chunk in raw.parse():
        state.handle_chunk(chunk)
    return raw.headers, state.get_final_completion()


def metric(gateway: GatewayProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_miss_then_hit_costs_nothing(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    client, messages = client_for(gateway), ask()
    hits = metric(gateway, "gateway_cache_requests_total", '{result="hit"}')
    saved = metric(gateway, "gateway_cache_saved_usd_total")
    first_headers, first = chat(client, messages)
    second_headers, second = chat(client, messages)
    assert fake_openai.calls == 1
    assert first_headers["x-gateway-cache"] == "MISS" and second_headers["x-gateway-cache"] == "HIT"
    assert second.model_dump() == first.model_dump()
    cost_usd = float(first_headers["x-gateway-cost-usd"])
    assert cost_usd == pytest.approx((11 * 0.15 + 7 * 0.6) / 1e6)
    assert float(second_headers["x-gateway-cost-usd"]) == 0.0
    assert float(second_headers["x-gateway-cost-saved-usd"]) == pytest.approx(cost_usd)
    assert "x-gateway-cost-saved-usd" not in first_headers
    assert second_headers["x-gateway-deployment"] == "fake/gpt-4o-mini"
    assert metric(gateway, "gateway_cache_requests_total", '{result="hit"}') == hits + 1
    assert metric(gateway, "gateway_cache_saved_usd_total") == pytest.approx(saved + cost_usd)
    assert fake_openai.violations == []


def test_tenants_never_share_entries(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    messages = ask()
    first, _ = chat(client_for(gateway, GATEWAY_KEY), messages)  # team a
    other_team, _ = chat(client_for(gateway, TEAM_B_KEY), messages)  # team b
    same_team, _ = chat(client_for(gateway, TEAM_A2_KEY), messages)  # team a, other key
    assert [first["x-gateway-cache"], other_team["x-gateway-cache"]] == ["MISS", "MISS"]
    assert same_team["x-gateway-cache"] == "HIT"
    assert fake_openai.calls == 2


def test_answer_parameters_change_the_key_others_do_not(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    client, messages = client_for(gateway), ask()
    chat(client, messages, temperature=0.2)
    changed, _ = chat(client, messages, temperature=0.3)
    seeded, _ = chat(client, messages, temperature=0.2, seed=3)
    assert changed["x-gateway-cache"] == "MISS" and seeded["x-gateway-cache"] == "MISS"
    ignored, _ = chat(client, messages, temperature=0.2, user="u-9", metadata={"k": "v"})
    assert ignored["x-gateway-cache"] == "HIT"
    assert fake_openai.calls == 3


def test_ttl_expiry(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    client = client_for(gateway)
    by_header, by_route = ask(), ask()
    chat(client, by_header, headers={"x-gateway-cache-ttl": "1"})
    chat(client, by_route, model="short-ttl")
    assert chat(client, by_header)[0]["x-gateway-cache"] == "HIT"
    assert chat(client, by_route, model="short-ttl")[0]["x-gateway-cache"] == "HIT"
    time.sleep(1.2)
    assert chat(client, by_header)[0]["x-gateway-cache"] == "MISS"
    assert chat(client, by_route, model="short-ttl")[0]["x-gateway-cache"] == "MISS"
    assert fake_openai.calls == 4


@pytest.mark.parametrize("with_tools", [False, True], ids=["text", "tool_calls"])
def test_stream_then_non_stream_replay(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, with_tools: bool
) -> None:
    client, messages = client_for(gateway), ask()
    params: dict[str, Any] = {"tools": [WEATHER_TOOL]} if with_tools else {}
    stream_headers, from_stream = streamed(client, messages, **params)
    json_headers, from_cache = chat(client, messages, **params)
    assert stream_headers["x-gateway-cache"] == "MISS" and json_headers["x-gateway-cache"] == "HIT"
    assert fake_openai.calls == 1
    assert_same_answer(from_stream, from_cache, with_tools)
    assert_event_stream_headers(stream_headers)


@pytest.mark.parametrize("with_tools", [False, True], ids=["text", "tool_calls"])
def test_non_stream_then_stream_replay(
    gateway: GatewayProcess, fake_openai: FakeOpenAI, with_tools: bool
) -> None:
    client, messages = client_for(gateway), ask()
    params: dict[str, Any] = {"tools": [WEATHER_TOOL]} if with_tools else {}
    json_headers, original = chat(client, messages, **params)
    stream_headers, replayed = streamed(client, messages, **params)
    assert json_headers["x-gateway-cache"] == "MISS" and stream_headers["x-gateway-cache"] == "HIT"
    assert float(stream_headers["x-gateway-cost-saved-usd"]) > 0
    assert_same_answer(original, replayed, with_tools)
    assert_event_stream_headers(stream_headers)  # a replay is framed as a live stream
    plain = list(
        client.chat.completions.create(model="gpt-test", messages=messages, stream=True, **params)
    )
    assert plain and all(c.usage is None and c.choices for c in plain)  # usage only when asked
    assert fake_openai.calls == 1


def assert_event_stream_headers(headers: Any) -> None:
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert headers["x-request-id"] and headers["x-gateway-deployment"]


def assert_same_answer(a: Any, b: Any, with_tools: bool) -> None:
    message_a, message_b = a.choices[0].message, b.choices[0].message
    assert message_a.content == message_b.content
    assert a.choices[0].finish_reason == b.choices[0].finish_reason
    assert a.usage.model_dump() == b.usage.model_dump()
    calls_a = [(c.id, c.function.name, c.function.arguments) for c in message_a.tool_calls or ()]
    calls_b = [(c.id, c.function.name, c.function.arguments) for c in message_b.tool_calls or ()]
    assert calls_a == calls_b
    if with_tools:
        assert calls_a == [("call_fake1", "get_weather", TOOL_ARGUMENTS)]
    else:
        assert message_a.content and message_a.content.strip() == "Hello from the fake OpenAI."


def test_redis_outage_fails_open_and_recovers(
    standalone_gateway: GatewayProcess, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> None:
    gateway = standalone_gateway
    client, messages = client_for(gateway), ask()
    assert chat(client, messages)[0]["x-gateway-cache"] == "MISS"
    log_start = len(gateway.log_text())
    redis_server.stop()
    try:
        outage = [chat(client, messages)[0]["x-gateway-cache"] for _ in range(8)]
        assert outage == ["MISS"] * 8  # served uncached, never failed
        assert fake_openai.calls == 9
    finally:
        redis_server.start()
    recovered, deadline = False, time.monotonic() + 10
    while not recovered and time.monotonic() < deadline:
        recovered = chat(client, messages)[0]["x-gateway-cache"] == "HIT"
        time.sleep(0.1)
    assert recovered, "the cache did not come back after Redis restarted"
    log = gateway.log_text()[log_start:]
    assert log.count("redis unavailable") == 1  # once per outage, not per request
    assert "redis available again" in log


def test_frozen_redis_costs_one_short_timeout_not_one_per_request(
    standalone_gateway: GatewayProcess, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> None:
    gateway = standalone_gateway
    client, messages = client_for(gateway), ask()
    chat(client, messages)
    errors = metric(gateway, "gateway_redis_errors_total", '{operation="cache"}')
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # alive but silent: every call times out
    try:
        started = time.monotonic()
        frozen = [chat(client, messages)[0]["x-gateway-cache"] for _ in range(10)]
        elapsed_s = time.monotonic() - started
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert frozen == ["MISS"] * 10 and fake_openai.calls == 11
    assert elapsed_s < 4.0, f"10 requests took {elapsed_s:.2f}s against a frozen Redis"
    # One timeout, then the cache leaves Redis alone for a second (at most one more probe).
    assert metric(gateway, "gateway_redis_errors_total", '{operation="cache"}') - errors <= 2
    recovered, deadline = False, time.monotonic() + 10
    while not recovered and time.monotonic() < deadline:
        recovered = chat(client, messages)[0]["x-gateway-cache"] == "HIT"
        time.sleep(0.1)
    assert recovered


def test_identical_concurrent_requests_share_one_upstream_call(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Behaviour(delay_s=0.3))
    messages = ask()

    async def one(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, str]:
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=messages
            )
            return raw.headers["x-gateway-cache"], raw.parse().choices[0].message.content or ""
        raw_stream = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=messages, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in raw_stream.parse() if c.choices]
        return raw_stream.headers["x-gateway-cache"], "".join(parts)

    async def burst() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client, stream=i % 5 == 4) for i in range(50)))

    results = asyncio.run(burst())
    assert fake_openai.calls == 1
    assert sorted(r[0] for r in results) == ["HIT"] * 49 + ["MISS"]
    assert {r[1].strip() for r in results} == {fake_openai.reply}


def test_upstream_error_is_shared_with_waiters_and_not_cached(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Behaviour(status=500, hang_s=0.3))
    messages = ask()

    async def burst() -> list[BaseException | Any]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0
        ) as client:
            calls = [
                client.chat.completions.create(model="gpt-test", messages=messages)
                for _ in range(5)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    assert fake_openai.calls == 1
    assert all(isinstance(r, openai.APIStatusError) and r.status_code == 502 for r in results), (
        results
    )
    headers, completion = chat(client_for(gateway), messages)
    assert headers["x-gateway-cache"] == "MISS" and completion.choices[0].message.content
    assert fake_openai.calls == 2


def test_waiters_of_a_broken_stream_elect_a_new_leader(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Behaviour(delay_s=0.3, drop_after_chunks=2))  # the leader's call only
    messages = ask()

    async def one(client: openai.AsyncOpenAI) -> str:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=messages, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def burst() -> list[str | BaseException]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(burst())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], openai.APIError)  # the leader, in band
    assert [r.strip() for r in results if isinstance(r, str)] == [fake_openai.reply] * 4
    assert fake_openai.calls == 2  # one waiter led a second call for the others


def test_partial_stream_is_not_cached(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    client, messages = client_for(gateway), ask()
    fake_openai.script(Behaviour(drop_after_chunks=2))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-test", messages=messages, stream=True))
    headers, _ = chat(client, messages)
    assert headers["x-gateway-cache"] == "MISS"
    assert fake_openai.calls == 2


def test_oversized_entries_are_not_stored(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    client, messages = client_for(gateway), ask()
    fake_openai.script(Behaviour(content="x" * MAX_ENTRY_BYTES))
    big_headers, big = chat(client, messages)
    assert big_headers["x-gateway-cache"] == "MISS" and len(big.choices[0].message.content) > 4000
    assert chat(client, messages)[0]["x-gateway-cache"] == "MISS"
    assert fake_openai.calls == 2


def test_cache_control_headers(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    client, messages = client_for(gateway), ask()
    chat(client, messages)
    no_cache, _ = chat(client, messages, headers={"cache-control": "no-cache"})
    assert no_cache["x-gateway-cache"] == "BYPASS" and fake_openai.calls == 2
    assert chat(client, messages)[0]["x-gateway-cache"] == "HIT"
    fresh = ask()
    no_store, _ = chat(client, fresh, headers={"cache-control": "no-store"})
    assert no_store["x-gateway-cache"] == "BYPASS"
    assert chat(client, fresh)[0]["x-gateway-cache"] == "MISS"  # no-store wrote nothing
    assert fake_openai.calls == 4


def test_route_without_cache_bypasses(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    client, messages = client_for(gateway), ask()
    for _ in range(2):
        assert chat(client, messages, model="no-cache-route")[0]["x-gateway-cache"] == "BYPASS"
    assert fake_openai.calls == 2


def test_purge_needs_an_admin_key_and_scopes_by_tenant(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    team_a, team_b, messages = client_for(gateway), client_for(gateway, TEAM_B_KEY), ask()
    chat(team_a, messages)
    chat(team_b, messages)
    purge = f"{gateway.url}/admin/cache/purge"
    assert httpx.post(purge).status_code == 401
    denied = httpx.post(purge, headers={"authorization": f"Bearer {GATEWAY_KEY}"})
    assert denied.status_code == 403 and denied.json()["error"]["type"]
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    bad = httpx.post(purge, headers=admin, json={"tenant": "a"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tenant"
    purged = httpx.post(purge, headers=admin, json={"tenant": "team:a"})
    assert purged.status_code == 200 and purged.json()["purged"] >= 1
    assert chat(team_a, messages)[0]["x-gateway-cache"] == "MISS"
    assert chat(team_b, messages)[0]["x-gateway-cache"] == "HIT"
    everything = httpx.post(purge, headers=admin)
    assert everything.status_code == 200 and everything.json()["tenant"] is None
    assert chat(team_b, messages)[0]["x-gateway-cache"] == "MISS"
    assert fake_openai.calls == 4


def test_memory_backend_without_redis(
    memory_gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    client, messages = client_for(memory_gateway), ask()
    assert chat(client, messages, model="cached")[0]["x-gateway-cache"] == "MISS"
    assert chat(client, messages, model="cached")[0]["x-gateway-cache"] == "HIT"
    assert streamed_from(client, messages, "cached") == "HIT"
    for _ in range(2):  # caching is off for every other route: no header, no cache
        assert "x-gateway-cache" not in chat(client, messages)[0]
    assert fake_openai.calls == 3


def streamed_from(client: openai.OpenAI, messages: list[dict[str, Any]], model: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return str(raw.headers["x-gateway-cache"])
