"""A burst is not an outage (rule 17): with the default Redis settings (a pool of 64
connections, a 0.5 s deadline), 1,000 concurrent requests of one key get exact limits:
an rpm=50 key admits exactly 50, a key with ample budget is served every time, and the
gateway logs no Redis outage."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.features.governance import ADMIN_KEY, ASK, bearer, governance_config
from tests.gatewayproc import GatewayProcess, RedisServer

BURST = 1000
RATE_KEY = f"gw-burst-rate-CANARY-{uuid.uuid4()}"
BUDGET_KEY = f"gw-burst-budget-CANARY-{uuid.uuid4()}"


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer
) -> GatewayProcess:
    keys = [
        {"name": f"burst-rate-{uuid.uuid4().hex[:8]}", "key": RATE_KEY, "rpm": 50},
        {"name": f"burst-budget-{uuid.uuid4().hex[:8]}", "key": BUDGET_KEY, "budget_usd": 1e6},
    ]
    config = governance_config(None, keys)
    config["redis"] = {"url": redis_server.url}  # the defaults: pool, timeouts, deadline
    config["limits"]["window_s"] = 60
    return start_gateway(config)


async def _burst(gateway: GatewayProcess, key: str) -> Counter[int]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    timeout = httpx.Timeout(30.0, pool=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one() -> int:
            body: dict[str, Any] = {"model": "sim-chat", "messages": ASK, "max_tokens": 10}
            url = f"{gateway.base_url}/chat/completions"
            return (await client.post(url, json=body, headers=bearer(key))).status_code

        return Counter(await asyncio.gather(*(one() for _ in range(BURST))))


def test_a_burst_of_one_rate_limited_key_admits_exactly_its_limit(gateway: GatewayProcess) -> None:
    statuses = asyncio.run(_burst(gateway, RATE_KEY))
    assert statuses == {200: 50, 429: BURST - 50}
    assert "redis unavailable" not in gateway.log_text()


def test_a_burst_of_a_key_with_ample_budget_is_all_served(gateway: GatewayProcess) -> None:
    statuses = asyncio.run(_burst(gateway, BUDGET_KEY))
    assert statuses == {200: BURST}
    assert "redis unavailable" not in gateway.log_text()
    spend = httpx.get(f"{gateway.url}/admin/usage", headers=bearer(ADMIN_KEY)).json()
    assert spend["total"]["requests"] >= BURST
