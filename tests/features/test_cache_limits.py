"""Cache hits and a key's limits, through a real gateway on a real Redis (one server,
then a cluster). A limited key's admission goes to Redis in the same write as its cache
read (gateway/api/chat.py, `AdmissionAhead`); these hold what that must not change: a
hit counts against rpm only, never refused for tokens or budget, and what a hit (or a
request that left while it waited) reserved is given back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.features.governance import bearer, governance_config
from tests.gatewayproc import GatewayProcess
from tests.redis_cluster import backend_of

RUN = uuid.uuid4().hex[:8]
BUDGET_KEY = f"gw-hit-budget-CANARY-{RUN}"  # 1.5 USD: one request (1.00 USD) fits, not two
# 35 tokens a window. A request of `prompt()` is estimated at 20 tokens (10 of prompt,
# max_tokens 10) and uses 27 (the simulated provider counts the JSON of the messages):
# after one, a new request does not fit (27 + 20), a hit (27 + 0) does.
TPM_KEY = f"gw-hit-tpm-CANARY-{RUN}"
HEADERS_KEY = f"gw-hit-headers-CANARY-{RUN}"
WAIT_KEY = f"gw-hit-wait-CANARY-{RUN}"
SDK_KEY = f"gw-hit-sdk-CANARY-{RUN}"  # 1.5 USD, as BUDGET_KEY
RPM, TPM = 100, 100_000
SETTLED_S = 0.5  # settlements are written in the background within milliseconds


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def gateway(
    request: pytest.FixtureRequest, start_gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    keys = [
        {"name": f"hit-budget-{RUN}", "key": BUDGET_KEY, "budget_usd": 1.5},
        {"name": f"hit-tpm-{RUN}", "key": TPM_KEY, "rpm": RPM, "tpm": 35},
        {"name": f"hit-headers-{RUN}", "key": HEADERS_KEY, "rpm": RPM, "tpm": TPM},
        {"name": f"hit-wait-{RUN}", "key": WAIT_KEY, "rpm": RPM, "tpm": TPM},
        {"name": f"hit-sdk-{RUN}", "key": SDK_KEY, "budget_usd": 1.5},
    ]
    config = governance_config(backend_of(request), keys)
    config["cache"] = {"enabled": True}
    config["providers"]["slow"] = {
        "kind": "simulated",
        "simulation": {"output_tokens": 10, "ttft_s": 1.5},
    }
    config["models"].append(
        {
            "name": "slow-chat",
            "provider": "slow",
            "model": "sim-slow",
            "input_price_per_mtok_usd": 0,
            "output_price_per_mtok_usd": 100_000,
        }
    )
    return start_gateway(config)


def ask(
    gateway: GatewayProcess, key: str, prompt: str, model: str = "sim-chat", timeout: float = 10
) -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 10,
    }
    return httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=bearer(key), timeout=timeout
    )


def prompt(tag: str) -> str:
    """A prompt nobody sent before, of a fixed length (the same token estimate)."""
    return f"{tag}-{uuid.uuid4().hex}"[:40].ljust(40, ".")


def left(answer: httpx.Response, unit: str) -> int:
    return int(answer.headers[f"x-ratelimit-remaining-{unit}"])


def served_then_refused_then_hit(
    gateway: GatewayProcess, key: str, tag: str, code: str
) -> tuple[httpx.Response, httpx.Response]:
    """A prompt served, a new one refused with `code`, the first again: a hit, served.
    Returns (the first answer, the hit)."""
    cached = prompt(tag)
    first = ask(gateway, key, cached)
    assert first.status_code == 200, first.text
    refused = ask(gateway, key, prompt(tag))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == code
    hit = ask(gateway, key, cached)
    assert hit.status_code == 200, hit.text
    assert hit.headers["x-gateway-cache"] == "HIT"
    return first, hit


def test_a_hit_is_served_when_the_budget_refuses_a_new_request(gateway: GatewayProcess) -> None:
    served_then_refused_then_hit(gateway, BUDGET_KEY, "budget", "insufficient_quota")
    assert ask(gateway, BUDGET_KEY, prompt("budget")).status_code == 429  # it cost nothing


def test_a_hit_is_served_when_tokens_refuse_a_new_request(gateway: GatewayProcess) -> None:
    first, hit = served_then_refused_then_hit(gateway, TPM_KEY, "tpm", "rate_limit_exceeded")
    assert first.json()["usage"]["total_tokens"] == 27
    # It counted as a request (as every hit of a key with rpm); the refused one did not.
    assert left(hit, "requests") == left(first, "requests") - 1


def test_a_hit_counts_as_a_request_and_gives_its_token_estimate_back(
    gateway: GatewayProcess,
) -> None:
    cached = prompt("headers")
    miss = ask(gateway, HEADERS_KEY, cached)
    assert miss.status_code == 200
    estimate = TPM - left(miss, "tokens")  # what the miss reserved: its estimate
    used = miss.json()["usage"]["total_tokens"]
    assert used > 0 and estimate > 0
    time.sleep(SETTLED_S)
    hit = ask(gateway, HEADERS_KEY, cached)
    assert hit.headers["x-gateway-cache"] == "HIT"
    assert left(hit, "requests") == left(miss, "requests") - 1
    assert left(hit, "tokens") == TPM - used  # the hit's own estimate is not counted
    time.sleep(SETTLED_S)
    again = ask(gateway, HEADERS_KEY, prompt("headers"))  # the same estimate as the first
    assert again.headers["x-gateway-cache"] == "MISS"
    assert left(again, "requests") == left(miss, "requests") - 2
    assert left(again, "tokens") == TPM - used - estimate  # nothing left held by the hit


def test_a_request_that_leaves_while_it_waits_on_an_identical_one_holds_nothing(
    gateway: GatewayProcess,
) -> None:
    """The second of two identical requests waits for the first's answer; its client
    gives up first. What its admission reserved (a request, its token estimate) is
    given back: a later request sees only the first's use."""
    same = prompt("wait")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(ask, gateway, WAIT_KEY, same, "slow-chat")
        time.sleep(0.5)  # the leader is upstream (1.5 s to its answer)
        with pytest.raises(httpx.ReadTimeout):
            ask(gateway, WAIT_KEY, same, "slow-chat", timeout=0.5)
        first = leader.result()
    assert first.status_code == 200
    assert first.headers["x-gateway-cache"] == "MISS"
    estimate = TPM - left(first, "tokens")
    used = first.json()["usage"]["total_tokens"]
    time.sleep(SETTLED_S)
    later = ask(gateway, WAIT_KEY, prompt("wait"), "slow-chat")
    assert later.status_code == 200
    assert left(later, "requests") == left(first, "requests") - 1
    assert left(later, "tokens") == TPM - used - estimate


def test_the_sdk_reads_a_refusal_made_with_the_cache_read(gateway: GatewayProcess) -> None:
    """The refusal of an admission sent with the cache read is the same OpenAI error as
    any: the official SDK raises RateLimitError with the code, and serves the hit."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=SDK_KEY, max_retries=0)
    with client:
        messages: Any = [{"role": "user", "content": prompt("sdk")}]
        first = client.chat.completions.create(model="sim-chat", messages=messages, max_tokens=10)
        again: Any = [{"role": "user", "content": prompt("sdk")}]
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="sim-chat", messages=again, max_tokens=10)
        assert refused.value.code == "insufficient_quota"
        assert refused.value.response.headers["x-should-retry"] == "false"
        hit = client.chat.completions.with_raw_response.create(
            model="sim-chat", messages=messages, max_tokens=10
        )
        assert hit.headers["x-gateway-cache"] == "HIT"
        assert hit.parse().choices[0].message.content == first.choices[0].message.content
