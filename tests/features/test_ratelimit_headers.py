"""Clients pace themselves with OpenAI's x-ratelimit-* headers: a key with rpm and tpm
limits gets them on every answer, from the admission that just ran, with Redis behind
the limits and without."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest

from tests.features.governance import chat, governance_config
from tests.gatewayproc import GatewayProcess, RedisServer

KEY = f"gw-paced-CANARY-{uuid.uuid4()}"
DURATION = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")


@pytest.fixture(params=["memory", "redis"], scope="module")
def gateway(
    request: pytest.FixtureRequest, start_gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    redis_url = None
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_server").url
    keys = [{"name": f"paced-{uuid.uuid4().hex[:8]}", "key": KEY, "rpm": 100, "tpm": 100_000}]
    return start_gateway(governance_config(redis_url, keys))


def test_answers_carry_what_is_left_of_the_limits(gateway: GatewayProcess) -> None:
    first, second = chat(gateway, KEY), chat(gateway, KEY)
    assert first.status_code == second.status_code == 200
    for answer in (first, second):
        headers = answer.headers
        assert headers["x-ratelimit-limit-requests"] == "100"
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        assert DURATION.match(headers["x-ratelimit-reset-requests"])
        assert DURATION.match(headers["x-ratelimit-reset-tokens"])
    left = [int(a.headers["x-ratelimit-remaining-requests"]) for a in (first, second)]
    assert left[1] == left[0] - 1 and left[0] <= 99
    tokens = [int(a.headers["x-ratelimit-remaining-tokens"]) for a in (first, second)]
    assert tokens[1] < tokens[0] < 100_000


def test_a_key_without_limits_gets_none(
    start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer
) -> None:
    plain = f"gw-plain-CANARY-{uuid.uuid4()}"
    gateway = start_gateway(governance_config(None, [{"name": "plain", "key": plain}]))
    answer = chat(gateway, plain)
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.startswith("x-ratelimit-")]
