"""Shared setup for the keys, limits and budgets feature tests: config, requests, Redis scans."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis

from tests.gatewayproc import GatewayProcess
from tests.redis_cluster import RedisBackend

ADMIN_KEY = "gw-admin-key-CANARY-5e21"
ASK = [{"role": "user", "content": "Count my tokens."}]
# The simulated provider answers 10 output tokens; at 100000 USD per million output
# tokens (and free input) every chat request costs exactly 1.00 USD, and a request
# with max_tokens=10 is estimated at exactly that too.
COST_PER_REQUEST_USD = 1.0


def governance_config(
    redis_url: str | RedisBackend | None, keys: list[dict[str, Any]], **limits: Any
) -> dict[str, Any]:
    """`redis_url`: one Redis's URL, or a `RedisBackend` (one Redis or a cluster)."""
    config: dict[str, Any] = {
        "server": {"request_timeout_s": 10},
        "auth": {"mode": "keys", "keys": keys, "admin_keys": [ADMIN_KEY]},
        "limits": {"key_sync_interval_s": 0.2, "deployment_sync_interval_s": 0.1, **limits},
        "providers": {"sim": {"kind": "simulated", "simulation": {"output_tokens": 10}}},
        "models": [
            {
                "name": "sim-chat",
                "provider": "sim",
                "model": "sim-1",
                "input_price_per_mtok_usd": 0,
                "output_price_per_mtok_usd": 100_000,
            },
            {"name": "sim-embed", "provider": "sim", "model": "sim-e", "mode": "embedding"},
            {"name": "quota-a", "id": "sim/quota-a", "provider": "sim", "model": "qa", "rpm": 2},
            {"name": "quota-b", "id": "sim/quota-b", "provider": "sim", "model": "qb"},
        ],
        "routes": [
            {"name": "quota-route", "policy": "fallback", "models": ["sim/quota-a", "sim/quota-b"]}
        ],
    }
    if redis_url is not None:
        # Generous timeouts: on a loaded test machine a slow answer must not count as an
        # outage (the outage test stops Redis: refused connections fail at once anyway).
        backend = redis_url if isinstance(redis_url, RedisBackend) else None
        backend = backend or RedisBackend("standalone", str(redis_url))
        config["redis"] = backend.section(socket_timeout_s=2, operation_deadline_s=3)
    return config


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(gateway: GatewayProcess, key: str, **body: Any) -> httpx.Response:
    payload = {"model": "sim-chat", "messages": ASK, "max_tokens": 10, **body}
    return httpx.post(
        f"{gateway.base_url}/chat/completions", json=payload, headers=bearer(key), timeout=10
    )


def in_parallel(calls: Iterable[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    work = list(calls)
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        return list(pool.map(lambda call: call(), work))


def admin(gateway: GatewayProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{gateway.url}{path}", headers=bearer(ADMIN_KEY), timeout=10, **kwargs
    )


def usage_of(gateway: GatewayProcess, key_name: str, requests: int) -> dict[str, Any]:
    """The key's line of today's report, once `requests` settlements were written."""
    deadline = time.monotonic() + 5
    while True:
        report = admin(gateway, "GET", "/admin/usage").json()
        line = next((g for g in report["by_key"] if g["key"] == key_name), None)
        if (line and line["requests"] >= requests) or time.monotonic() > deadline:
            assert line is not None, report
            return line
        time.sleep(0.05)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def redis_dump(url: str) -> list[bytes]:
    """Every key name and every stored value (all types) of a Redis database."""
    out: list[bytes] = []
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(count=500):
            out.append(key)
            kind = client.type(key)
            if kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"hash":
                out += [part for item in client.hgetall(key).items() for part in item]
            elif kind == b"set":
                out += list(client.smembers(key))
            elif kind == b"zset":
                out += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"list":
                out += list(client.lrange(key, 0, -1))
    return out
