"""Routing through the real server: policies send traffic where they should, and
fallback, retries and cooldowns keep the client from noticing provider failures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, free_port
from tests.gatewayproc import REPO, GatewayProcess

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ASK = [{"role": "user", "content": "Route me."}]


@pytest.fixture(scope="module")
def fake_cheap() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=OPENAI_KEY).start()
    fake.reply = "cheap answer"
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def fake_premium() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=OPENAI_KEY).start()
    fake.reply = "premium answer"
    yield fake
    fake.stop()


def model(
    name: str, provider: str, upstream: str, price_in: float, price_out: float, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "model": upstream,
        "input_price_per_mtok_usd": price_in,
        "output_price_per_mtok_usd": price_out,
        **extra,
    }


def routing_config(
    cheap: FakeOpenAI, premium: FakeOpenAI, cooldown_failures: int = 1000
) -> dict[str, Any]:
    def provider(fake: FakeOpenAI) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": f"{fake.base_url}/v1",
            "api_key": OPENAI_KEY,
            "timeouts": {"read_s": 1.0, "connect_s": 1.0},
        }

    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "server": {"request_timeout_s": 10},
        "routing": {
            "cooldown_failures": cooldown_failures,
            "cooldown_s": 1.5,
            "max_retry_after_s": 0.5,
        },
        "providers": {
            "cheap": provider(cheap),
            "premium": provider(premium),
            "dead": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                "api_key": OPENAI_KEY,
            },
        },
        "models": [
            model("m-cheap", "cheap", "cheap-model", 0.1, 0.4, quality=0.5),
            model("m-premium", "premium", "premium-model", 3.0, 15.0, quality=0.95),
            model("m-dead", "dead", "dead-model", 0.001, 0.001),
            model("m-tiny", "cheap", "tiny-model", 0.01, 0.01, context_window_tokens=300),
            model("m-notools", "cheap", "notools-model", 0.01, 0.01, capabilities=["stream"]),
        ],
        "routes": [
            {"name": "cheapest", "policy": "cheapest", "models": ["m-premium", "m-cheap"]},
            {
                "name": "best",
                "policy": "best_score",
                "models": ["m-cheap", "m-premium"],
                "params": {"weights": {"quality": 1.0, "cost": 0.0, "latency": 0.0}},
            },
            {"name": "chain", "policy": "fallback", "models": ["m-cheap", "m-premium"]},
            {"name": "with-dead", "policy": "cheapest", "models": ["m-dead", "m-cheap"]},
            {"name": "windowed", "policy": "cheapest", "models": ["m-tiny", "m-premium"]},
            {"name": "tools-only", "policy": "cheapest", "models": ["m-notools"]},
            {"name": "solo", "policy": "fallback", "models": ["m-cheap"]},
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(routing_config(fake_cheap, fake_premium))


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)


def chat(client: openai.OpenAI, route: str, **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=route, messages=ASK, **kwargs)


def test_cheapest_sends_traffic_to_the_cheaper(
    client: openai.OpenAI, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    for _ in range(3):
        raw = chat(client, "cheapest")
        assert raw.parse().choices[0].message.content == "cheap answer"
    assert (fake_cheap.calls, fake_premium.calls) == (3, 0)
    assert raw.headers["x-gateway-policy"] == "cheapest"
    assert raw.headers["x-gateway-deployment"] == "cheap/cheap-model"


def test_best_score_sends_traffic_to_the_better(
    client: openai.OpenAI, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    assert chat(client, "best").parse().choices[0].message.content == "premium answer"
    assert (fake_cheap.calls, fake_premium.calls) == (0, 1)


@pytest.mark.parametrize(
    "failure",
    [
        Behaviour(status=500),
        Behaviour(status=503),
        Behaviour(status=429),
        Behaviour(hang_s=3),
        Behaviour(drop_before_response=True),
    ],
    ids=["500", "503", "429", "timeout", "reset"],
)
def test_fallback_hides_failures(
    client: openai.OpenAI, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI, failure: Behaviour
) -> None:
    fake_cheap.script(failure, failure)  # twice: a reset may be retried in place once
    raw = chat(client, "chain")
    assert raw.parse().choices[0].message.content == "premium answer"
    assert raw.headers["x-gateway-deployment"] == "premium/premium-model"
    assert int(raw.headers["x-gateway-attempts"]) >= 2


def test_connection_refused_falls_back(client: openai.OpenAI, fake_cheap: FakeOpenAI) -> None:
    raw = chat(client, "with-dead")
    assert raw.parse().choices[0].message.content == "cheap answer"
    # the dead one is retried once in place (connection error), then the next is used
    assert raw.headers["x-gateway-attempts"] == "3"


def test_client_error_is_not_retried(
    client: openai.OpenAI, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    fake_cheap.script(Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        chat(client, "chain")
    assert (fake_cheap.calls, fake_premium.calls) == (1, 0)


def test_short_429_on_last_candidate_is_retried_in_place(
    client: openai.OpenAI, fake_cheap: FakeOpenAI
) -> None:
    fake_cheap.script(Behaviour(status=429, headers={"retry-after-ms": "100"}))
    raw = chat(client, "solo")
    assert raw.parse().choices[0].message.content == "cheap answer"
    assert fake_cheap.calls == 2


def test_stream_falls_back_before_first_content(
    client: openai.OpenAI, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    # the cheap upstream sends its role preamble and then dies: nothing reached the client yet
    fake_cheap.script(Behaviour(drop_after_chunks=1))
    stream = client.chat.completions.create(model="chain", messages=ASK, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() == "premium answer"
    assert (fake_cheap.calls, fake_premium.calls) == (1, 1)


def test_stream_failure_after_commit_is_an_in_band_error(
    client: openai.OpenAI, fake_cheap: FakeOpenAI
) -> None:
    fake_cheap.script(Behaviour(drop_after_chunks=3))
    received = []
    # Closed when done: openai 2.x leaves a stream that raised open (a ResourceWarning).
    with (
        client.chat.completions.create(model="chain", messages=ASK, stream=True) as stream,
        pytest.raises(openai.APIError),
    ):
        for chunk in stream:
            received.append(chunk)
    assert received  # some content arrived before the failure
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)


def test_context_window_skip(
    client: openai.OpenAI, gateway: GatewayProcess, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    long_prompt = [{"role": "user", "content": "word " * 400}]  # ~500 tokens > 300 window
    raw = client.chat.completions.with_raw_response.create(model="windowed", messages=long_prompt)
    assert raw.headers["x-gateway-deployment"] == "premium/premium-model"
    explained = httpx.post(
        f"{gateway.base_url}/route/explain",
        headers=AUTH,
        json={"model": "windowed", "messages": long_prompt},
    ).json()
    assert [r["reason"] for r in explained["rejected"]] == ["context_window"]
    short = chat(client, "windowed")
    assert short.headers["x-gateway-deployment"] == "cheap/tiny-model"


def test_no_eligible_deployment_names_why(client: openai.OpenAI) -> None:
    """A capability no candidate has is the request's to change: a 400, not a 503."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tools-only", messages=ASK, tools=[tool])
    assert info.value.status_code == 400
    assert info.value.code == "unsupported_capability" and "tools" in info.value.message


def test_all_failing_gives_last_error(
    client: openai.OpenAI, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    fake_cheap.script(Behaviour(status=500))
    fake_premium.script(Behaviour(status=503))
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, "chain")
    assert info.value.status_code == 502
    assert (
        "cheap/cheap-model" in info.value.message and "premium/premium-model" in info.value.message
    )


def test_cooldown_and_recovery(
    start_gateway: Callable[..., GatewayProcess], fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI
) -> None:
    gateway = start_gateway(routing_config(fake_cheap, fake_premium, cooldown_failures=2))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    fake_cheap.script(Behaviour(status=500), Behaviour(status=500))
    for _ in range(2):
        chat(client, "chain")  # two consecutive failures: cheap cools down
    assert fake_cheap.calls == 2
    raw = chat(client, "chain")
    assert raw.headers["x-gateway-deployment"] == "premium/premium-model"
    assert fake_cheap.calls == 2  # skipped while cooling down, not even tried
    time.sleep(1.6)
    raw = chat(client, "chain")  # half-open: probed again, and it has recovered
    assert raw.headers["x-gateway-deployment"] == "cheap/cheap-model"


def test_per_request_controls(client: openai.OpenAI, fake_premium: FakeOpenAI) -> None:
    raw = chat(client, "chain", extra_headers={"x-gateway-exclude-providers": "cheap"})
    assert raw.headers["x-gateway-deployment"] == "premium/premium-model"
    raw = chat(client, "cheapest", extra_headers={"x-gateway-providers": "premium"})
    assert raw.headers["x-gateway-deployment"] == "premium/premium-model"
    raw = chat(client, "cheapest", extra_headers={"x-gateway-policy": "best_score"})
    assert raw.headers["x-gateway-policy"] == "best_score"
    with pytest.raises(openai.BadRequestError) as info:  # nothing is that cheap: a 400
        chat(client, "best", extra_headers={"x-gateway-max-cost-usd": "0.0000000001"})
    assert "exceeds max" in info.value.message
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "x-gateway-max-cost-usd"
    with pytest.raises(openai.BadRequestError):
        chat(client, "chain", extra_headers={"x-gateway-policy": "no-such-policy"})


def test_explain_endpoint_and_cli_agree(
    gateway: GatewayProcess, fake_cheap: FakeOpenAI, fake_premium: FakeOpenAI, tmp_path: Path
) -> None:
    body = {"model": "cheapest", "messages": ASK}
    served = httpx.post(f"{gateway.base_url}/route/explain", headers=AUTH, json=body).json()
    assert [c["deployment_id"] for c in served["ordered"]] == [
        "cheap/cheap-model",
        "premium/premium-model",
    ]
    assert fake_cheap.calls == 0 and fake_premium.calls == 0  # no upstream was called
    config = yaml.safe_load(gateway.config_path.read_text())
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(body))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "explain",
            "--config",
            str(tmp_path / "g.yaml"),
            str(body_file),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    cli = json.loads(out.stdout)
    assert [c["deployment_id"] for c in cli["ordered"]] == [
        c["deployment_id"] for c in served["ordered"]
    ]


def test_cooldown_is_shared_across_replicas(
    start_gateway: Callable[..., GatewayProcess],
    redis_server: Any,
    fake_cheap: FakeOpenAI,
    fake_premium: FakeOpenAI,
) -> None:
    config = routing_config(fake_cheap, fake_premium, cooldown_failures=1)
    config["routing"] |= {"cooldown_s": 30, "stats_sync_interval_s": 0.1}
    config["redis"] = {"url": redis_server.url}
    first, second = start_gateway(config), start_gateway(config)
    fake_cheap.script(Behaviour(status=500))
    client_one = openai.OpenAI(base_url=first.base_url, api_key=GATEWAY_KEY, max_retries=0)
    assert chat(client_one, "chain").headers["x-gateway-attempts"] == "2"  # cheap cooled down
    time.sleep(0.5)  # a few sync rounds
    client_two = openai.OpenAI(base_url=second.base_url, api_key=GATEWAY_KEY, max_retries=0)
    raw = chat(client_two, "chain")
    assert raw.headers["x-gateway-deployment"] == "premium/premium-model"
    assert fake_cheap.calls == 1  # the second replica never tried the cooled-down one
