"""Money and access live in SQL, not in the cache: runtime keys, revocations and budgets
survive a Redis flush and restart and a gateway restart; the request log answers "what
happened to this request?"; the usage report is the ledger's.

One redis-server private to this module (the tests flush and restart it)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.features.governance import (
    ADMIN_KEY,
    COST_PER_REQUEST_USD,
    admin,
    bearer,
    chat,
    error_of,
    governance_config,
)
from tests.gatewayproc import REPO, GatewayProcess, RedisServer
from tests.pgserver import PostgresServer

REVOKED = {"name": "sor-revoked", "key": "gw-sor-revoked-CANARY-71c2"}
BUDGETED = {
    "name": "sor-budget",
    "key": "gw-sor-budget-CANARY-0a9d",
    "budget_usd": 3.0,
    "budget_period": "month",
}
PLAIN = {"name": "sor-plain", "key": "gw-sor-plain-CANARY-33e1", "team": "green"}
KEYS = [REVOKED, BUDGETED, PLAIN]
# Ledger rows reach SQL within flush_interval_s; replicas refresh their budget floors from
# the ledger every LEDGER_REFRESH_S (2 s): wait for both before pulling Redis away.
SETTLED_S = 3.5


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("sor-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sor-db') / 'gateway.db'}"


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], private_redis: RedisServer, database_url: str
) -> GatewayProcess:
    config = governance_config(private_redis.url, KEYS)
    config["database"] = {"url": database_url, "flush_interval_s": 0.1}
    return start_gateway(config)


def flush_redis(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as client:
        client.flushall()


def restart_redis(server: RedisServer) -> None:
    server.stop()
    server.start()  # no persistence: it comes back empty


def status_within(gateway: GatewayProcess, key: str, status: int, bound_s: float = 5) -> None:
    deadline = time.monotonic() + bound_s
    while (got := chat(gateway, key).status_code) != status:
        assert time.monotonic() < deadline, f"still {got}, wanted {status}"
        time.sleep(0.1)


def test_runtime_keys_and_revocations_survive_redis_flush_and_restart(
    gateway: GatewayProcess, private_redis: RedisServer
) -> None:
    created = admin(gateway, "POST", "/admin/keys", json={"name": "sor-runtime"}).json()
    revoked_runtime = admin(gateway, "POST", "/admin/keys", json={"name": "sor-gone"}).json()
    assert admin(gateway, "POST", f"/admin/keys/{revoked_runtime['id']}/revoke").is_success
    config_id = next(
        k["id"]
        for k in admin(gateway, "GET", "/admin/keys").json()["data"]
        if k["name"] == REVOKED["name"]
    )
    assert admin(gateway, "POST", f"/admin/keys/{config_id}/revoke").is_success
    for fault in (flush_redis, restart_redis):
        fault(private_redis)
        time.sleep(0.5)  # several key syncs
        assert chat(gateway, created["key"]).status_code == 200
        assert chat(gateway, revoked_runtime["key"]).status_code == 401
        assert chat(gateway, REVOKED["key"]).status_code == 401
    names = {k["name"] for k in admin(gateway, "GET", "/admin/keys").json()["data"]}
    assert {"sor-runtime", "sor-gone"} <= names


def test_a_spent_budget_stays_spent_when_redis_forgets_it(
    gateway: GatewayProcess, private_redis: RedisServer
) -> None:
    key = BUDGETED["key"]
    for _ in range(3):  # 3 x 1.00 USD: the whole budget
        assert chat(gateway, key).status_code == 200
    refused = chat(gateway, key)
    assert refused.status_code == 429 and error_of(refused)["code"] == "insufficient_quota"
    time.sleep(SETTLED_S)
    for fault in (flush_redis, restart_redis):
        fault(private_redis)
        time.sleep(0.3)
        again = chat(gateway, key)
        assert again.status_code == 429, again.text
        assert error_of(again)["code"] == "insufficient_quota"


def test_the_request_log_answers_what_happened(gateway: GatewayProcess) -> None:
    response = chat(gateway, PLAIN["key"], user="x")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    found = admin(gateway, "GET", f"/admin/requests/{request_id}")
    assert found.status_code == 200, found.text
    (row,) = found.json()["data"]
    assert row["key_name"] == PLAIN["name"] and row["team"] == "green"
    assert row["route"] == "sim-chat" and row["status"] == 200 and row["attempts"] == 1
    assert row["deployment"] == response.headers["x-gateway-deployment"]
    assert row["output_tokens"] == 10 and row["stream"] is False
    assert float(row["cost_usd"]) == float(response.headers["x-gateway-cost-usd"])
    assert row["latency_ms"] > 0 and "messages" not in row and "content" not in row
    refused = chat(gateway, PLAIN["key"], model="no-such-model")
    assert refused.status_code == 404
    listed = admin(
        gateway, "GET", "/admin/requests", params={"key": PLAIN["name"], "status": 4}
    ).json()["data"]
    assert [r["request_id"] for r in listed] == [refused.headers["x-request-id"]]
    missing = admin(gateway, "GET", "/admin/requests/no-such-request")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    bad = admin(gateway, "GET", "/admin/requests", params={"since": "yesterday"})
    assert bad.status_code == 400 and error_of(bad)["param"] == "since"


def test_admin_reads_need_an_admin_key(gateway: GatewayProcess) -> None:
    for path in ("/admin/requests", "/admin/requests/x", "/admin/usage?month=current"):
        assert httpx.get(f"{gateway.url}{path}").status_code == 401
        assert httpx.get(f"{gateway.url}{path}", headers=bearer(PLAIN["key"])).status_code == 403
        assert httpx.get(f"{gateway.url}{path}", headers=bearer(ADMIN_KEY)).status_code != 403


def test_the_usage_report_is_the_ledger_month_to_date(
    gateway: GatewayProcess, private_redis: RedisServer
) -> None:
    created = admin(gateway, "POST", "/admin/keys", json={"name": "sor-report"}).json()
    costs = [float(chat(gateway, created["key"]).headers["x-gateway-cost-usd"]) for _ in range(4)]
    flush_redis(private_redis)  # the report does not live in Redis
    report = admin(gateway, "GET", "/admin/usage", params={"month": "current"}).json()
    line = next(g for g in report["by_key"] if g["key"] == "sor-report")
    assert line["requests"] == 4 and line["output_tokens"] == 40
    assert line["cost_usd"] == pytest.approx(sum(costs), abs=1e-9)
    assert sum(costs) == 4 * COST_PER_REQUEST_USD
    bad = admin(gateway, "GET", "/admin/usage", params={"month": "2025-13"})
    assert bad.status_code == 400 and error_of(bad)["param"] == "month"


def test_without_redis_keys_and_budgets_survive_a_gateway_restart(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """The embedded default: no Redis, an SQLite file. A restart keeps the runtime keys,
    the revocations and what each budget has spent."""
    config: dict[str, Any] = governance_config(None, KEYS)
    config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"}
    first = start_gateway(config)
    created = admin(first, "POST", "/admin/keys", json={"name": "sor-local"}).json()
    config_id = next(
        k["id"]
        for k in admin(first, "GET", "/admin/keys").json()["data"]
        if k["name"] == REVOKED["name"]
    )
    assert admin(first, "POST", f"/admin/keys/{config_id}/revoke").is_success
    for _ in range(3):
        assert chat(first, BUDGETED["key"]).status_code == 200
    first.stop()  # a graceful stop writes what it buffered
    second = GatewayProcess(config, first.config_path.parent)
    second.port = first.port
    second.config_path = first.config_path
    second.start()
    try:
        assert chat(second, created["key"]).status_code == 200
        assert chat(second, REVOKED["key"]).status_code == 401
        assert chat(second, BUDGETED["key"]).status_code == 429
    finally:
        second.stop()


def test_the_cli_reads_the_request_log_and_the_ledger(gateway: GatewayProcess) -> None:
    """`gateway requests` and `gateway usage` read SQL straight (no gateway involved)."""
    response = chat(gateway, PLAIN["key"])
    request_id = response.headers["x-request-id"]
    admin(gateway, "GET", "/admin/requests?limit=1")  # the gateway writes what it buffered

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", *args, "--config", str(gateway.config_path)]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)

    found = cli("requests", request_id, "--json")
    assert found.returncode == 0, found.stderr
    (row,) = json.loads(found.stdout)["data"]
    assert row["key_name"] == PLAIN["name"] and row["status"] == 200
    table = cli("requests", "--key", PLAIN["name"], "--limit", "1")
    assert table.returncode == 0 and request_id in table.stdout
    assert cli("requests", "no-such-id").returncode == 1
    bad = cli("requests", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
    usage = cli("usage", "--month", "current", "--json")
    assert usage.returncode == 0, usage.stderr
    by_key = {g["key"]: g for g in json.loads(usage.stdout)["by_key"]}
    assert by_key[PLAIN["name"]]["requests"] >= 1


def test_a_route_that_opts_in_keeps_bodies_and_answers_with_secrets_redacted(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    config: dict[str, Any] = governance_config(None, KEYS)
    config["routes"].append({"name": "logged", "models": ["sim-chat"], "log_payloads": True})
    config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"}
    gateway = start_gateway(config)
    secret = "sk-proj-CANARYabcdefghijklmnopqrstuvwx"
    ask = [{"role": "user", "content": f"my key is {secret}, count my tokens"}]
    plain = chat(gateway, PLAIN["key"], model="logged", messages=ask)
    streamed = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "logged", "messages": ask, "stream": True, "max_tokens": 10},
        headers=bearer(PLAIN["key"]),
        timeout=10,
    )
    unlogged = chat(gateway, PLAIN["key"], messages=ask)  # sim-chat: no log_payloads
    assert plain.status_code == streamed.status_code == unlogged.status_code == 200

    def row_of(response: httpx.Response) -> dict[str, Any]:
        found = admin(gateway, "GET", f"/admin/requests/{response.headers['x-request-id']}")
        (row,) = found.json()["data"]
        return dict(row)

    row = row_of(plain)
    assert row["request_payload"]["model"] == "logged"
    content = row["request_payload"]["messages"][0]["content"]
    assert secret not in content and "[redacted]" in content
    answer = plain.json()["choices"][0]["message"]["content"]
    assert row["response_payload"]["choices"][0]["message"]["content"] == answer
    streamed_row = row_of(streamed)
    assert streamed_row["request_payload"]["stream"] is True
    events = [
        json.loads(line[len("data: ") :])
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
    ]
    sent = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert sent and streamed_row["response_payload"]["choices"][0]["message"]["content"] == sent
    assert row_of(unlogged)["request_payload"] is None
    assert row_of(unlogged)["response_payload"] is None
    assert secret not in (tmp_path / "g.db").read_bytes().decode(errors="replace")


def test_a_key_that_opts_in_has_its_bodies_and_answers_kept(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    logged = {"name": "sor-logged", "key": "gw-sor-logged-CANARY-9d1f", "log_payloads": True}
    config: dict[str, Any] = governance_config(None, [*KEYS, logged])
    config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"}
    gateway = start_gateway(config)
    runtime = admin(
        gateway, "POST", "/admin/keys", json={"name": "sor-rt-logged", "log_payloads": True}
    ).json()
    assert runtime["log_payloads"] is True
    for key, kept in ((logged["key"], True), (runtime["key"], True), (PLAIN["key"], False)):
        response = chat(gateway, key)
        found = admin(gateway, "GET", f"/admin/requests/{response.headers['x-request-id']}")
        (row,) = found.json()["data"]
        assert (row["request_payload"] is not None) is kept
        assert (row["response_payload"] is not None) is kept


def test_runtime_keys_an_earlier_version_kept_in_redis_are_imported_once(
    start_gateway: Callable[..., GatewayProcess], private_redis: RedisServer, tmp_path: Path
) -> None:
    """Before SQL, runtime keys were Redis hashes: a gateway with an empty database takes
    them over at start-up (revocations of config keys too)."""
    secret = "gw-legacy-CANARY-5b2e7c9d0a1f"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    revoked_digest = hashlib.sha256(PLAIN["key"].encode()).hexdigest()
    fields = {"id": "key_legacy1", "name": "sor-legacy", "team": "old", "budget_period": "month"}
    fields |= {"labels": "{}", "created_at": "1700000000.0", "digest": digest, "routes": ""}
    with redis.Redis.from_url(private_redis.url) as client:
        client.flushall()
        client.hset("gw:keys:rec:key_legacy1", mapping=fields)
        client.sadd("gw:keys:ids", "key_legacy1")
        client.sadd("gw:keys:revoked_config", revoked_digest)
    config = governance_config(private_redis.url, KEYS)
    config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"}
    gateway = start_gateway(config)
    assert chat(gateway, secret).status_code == 200
    assert chat(gateway, PLAIN["key"]).status_code == 401
    flush_redis(private_redis)  # from now on SQL holds them
    time.sleep(0.5)
    assert chat(gateway, secret).status_code == 200
    assert chat(gateway, PLAIN["key"]).status_code == 401
    listed = {k["name"]: k for k in admin(gateway, "GET", "/admin/keys").json()["data"]}
    assert listed["sor-legacy"]["team"] == "old" and listed["sor-legacy"]["source"] == "runtime"


def test_sql_down_serves_requests_and_admin_writes_get_a_retryable_503(
    start_gateway: Callable[..., GatewayProcess], postgres_server: PostgresServer
) -> None:
    config = governance_config(None, KEYS)
    config["database"] = {"url": postgres_server.create_database("sor_sql_down")}
    gateway = start_gateway(config)
    postgres_server.stop()
    try:
        assert chat(gateway, PLAIN["key"]).status_code == 200  # keys from memory
        refused = admin(gateway, "POST", "/admin/keys", json={"name": "sor-while-down"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert error_of(refused)["code"] == "database_unavailable"
        report = admin(gateway, "GET", "/admin/requests")
        assert report.status_code == 503 and error_of(report)["code"] == "database_unavailable"
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 10
    while admin(gateway, "POST", "/admin/keys", json={"name": "sor-after"}).status_code != 201:
        assert time.monotonic() < deadline, "admin writes did not come back with SQL"
        time.sleep(0.2)
