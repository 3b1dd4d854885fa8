"""A budget refusal says what happened: the budget is spent, or what is left against what
the request was estimated at, and how to lower the estimate (`max_tokens`); the same with
Redis behind the budget and without."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.features.governance import chat, governance_config
from tests.gatewayproc import GatewayProcess


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_server").url
    return url


def test_an_estimate_larger_than_what_is_left_says_so(
    start_gateway: Callable[..., GatewayProcess], redis_url: str | None
) -> None:
    key = f"gw-budget-msg-CANARY-{uuid.uuid4()}"
    name = f"budgeted-{uuid.uuid4().hex[:8]}"
    gateway = start_gateway(
        governance_config(redis_url, [{"name": name, "key": key, "budget_usd": 1.5}])
    )
    assert chat(gateway, key).status_code == 200  # 1.00 USD spent, 0.50 left
    refused = chat(gateway, key)  # estimated at 1.00 USD
    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    assert "0.5000 USD left" in message and "estimated at up to 1.0000 USD" in message
    assert "max_tokens" in message and "used up" not in message
    assert chat(gateway, key, max_tokens=4).status_code == 200  # a smaller estimate fits


def test_a_spent_budget_says_it_is_used_up(
    start_gateway: Callable[..., GatewayProcess], redis_url: str | None
) -> None:
    key = f"gw-budget-spent-CANARY-{uuid.uuid4()}"
    name = f"spent-{uuid.uuid4().hex[:8]}"
    gateway = start_gateway(
        governance_config(redis_url, [{"name": name, "key": key, "budget_usd": 1.0}])
    )
    assert chat(gateway, key).status_code == 200
    refused = chat(gateway, key)
    assert refused.status_code == 429
    assert "is used up: 1.0000 USD spent or reserved" in refused.json()["error"]["message"]
