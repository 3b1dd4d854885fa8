"""Gateway keys at run time: the admin API across three replicas, revocation reaching
every replica within the sync interval, secrets never stored or logged in clear,
and the spend report (admin endpoint and `gateway usage`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.features.governance import (
    ADMIN_KEY,
    admin,
    bearer,
    chat,
    error_of,
    governance_config,
    redis_dump,
    usage_of,
)
from tests.gatewayproc import REPO, GatewayProcess, RedisServer

CONFIG_KEY = "gw-config-user-CANARY-99cc"
REVOCABLE_CONFIG_KEY = "gw-config-revocable-CANARY-aa11"
SYNC_INTERVAL_S = 0.2  # limits.key_sync_interval_s in governance_config
PROPAGATION_BOUND_S = SYNC_INTERVAL_S + 0.6  # the interval plus a reload and requests


@pytest.fixture(scope="module")
def replicas(
    start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer
) -> list[GatewayProcess]:
    keys = [
        {"name": "config-user", "key": CONFIG_KEY, "team": "ops"},
        {"name": "config-revocable", "key": REVOCABLE_CONFIG_KEY},
    ]
    config = governance_config(redis_server.url, keys, window_s=30)
    return [start_gateway(config) for _ in range(3)]


def create_key(gateway: GatewayProcess, **spec: Any) -> dict[str, Any]:
    response = admin(gateway, "POST", "/admin/keys", json=spec)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def statuses(replicas: list[GatewayProcess], key: str) -> list[int]:
    return [chat(g, key).status_code for g in replicas]


def wait_for(replicas: list[GatewayProcess], key: str, status: int, bound_s: float) -> float:
    """Seconds until every replica answers `status` for `key`; fails past `bound_s`."""
    started = time.monotonic()
    while statuses(replicas, key) != [status] * len(replicas):
        assert time.monotonic() - started < bound_s, statuses(replicas, key)
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys/key_x"),
        ("POST", "/admin/keys/key_x/revoke"),
        ("POST", "/admin/keys/key_x/rotate"),
        ("GET", "/admin/usage"),
    ],
)
def test_admin_endpoints_need_an_admin_key(
    replicas: list[GatewayProcess], method: str, path: str
) -> None:
    url = f"{replicas[0].url}{path}"
    for headers, status, kind in [
        ({}, 401, "authentication_error"),
        (bearer("gw-not-a-key"), 401, "authentication_error"),
        (bearer(CONFIG_KEY), 403, "permission_error"),  # a valid key, but not an admin's
    ]:
        response = httpx.request(method, url, headers=headers, json={"name": "x"}, timeout=5)
        assert response.status_code == status, (headers, response.text)
        assert error_of(response)["type"] == kind


def test_created_key_works_everywhere_and_revocation_reaches_every_replica(
    replicas: list[GatewayProcess],
) -> None:
    created = create_key(replicas[0], name="svc-revoke", team="blue")
    secret = created["key"]
    assert secret.startswith("gw-") and created["source"] == "runtime"
    assert chat(replicas[0], secret).status_code == 200  # the creating replica at once
    wait_for(replicas, secret, 200, PROPAGATION_BOUND_S)

    revoked = admin(replicas[1], "POST", f"/admin/keys/{created['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert chat(replicas[1], secret).status_code == 401  # the revoking replica at once
    took_s = wait_for(replicas, secret, 401, PROPAGATION_BOUND_S)
    assert took_s < PROPAGATION_BOUND_S
    time.sleep(SYNC_INTERVAL_S)
    assert statuses(replicas, secret) == [401, 401, 401]  # and it stays revoked
    assert error_of(chat(replicas[2], secret))["code"] == "invalid_api_key"


def test_rotation_replaces_the_secret_on_every_replica(replicas: list[GatewayProcess]) -> None:
    created = create_key(replicas[0], name="svc-rotate")
    old = created["key"]
    wait_for(replicas, old, 200, PROPAGATION_BOUND_S)
    rotated = admin(replicas[2], "POST", f"/admin/keys/{created['id']}/rotate", json={})
    assert rotated.status_code == 200
    new = rotated.json()["key"]
    assert new != old and rotated.json()["id"] == created["id"]
    wait_for(replicas, new, 200, PROPAGATION_BOUND_S)
    wait_for(replicas, old, 401, PROPAGATION_BOUND_S)


def test_rotation_grace_keeps_the_old_secret_for_a_while(replicas: list[GatewayProcess]) -> None:
    created = create_key(replicas[0], name="svc-grace")
    old = created["key"]
    rotated = admin(replicas[0], "POST", f"/admin/keys/{created['id']}/rotate", json={"grace_s": 1})
    new = rotated.json()["key"]
    assert chat(replicas[0], old).status_code == 200 and chat(replicas[0], new).status_code == 200
    time.sleep(1.1)
    assert chat(replicas[0], old).status_code == 401
    assert chat(replicas[0], new).status_code == 200


def test_config_key_can_be_revoked_at_run_time(replicas: list[GatewayProcess]) -> None:
    listed = admin(replicas[0], "GET", "/admin/keys").json()["data"]
    entry = next(k for k in listed if k["name"] == "config-revocable")
    assert entry["source"] == "config" and entry["revoked"] is False
    assert admin(replicas[0], "POST", f"/admin/keys/{entry['id']}/revoke").status_code == 200
    wait_for(replicas, REVOCABLE_CONFIG_KEY, 401, PROPAGATION_BOUND_S)
    rotate = admin(replicas[0], "POST", f"/admin/keys/{entry['id']}/rotate")
    assert rotate.status_code == 400  # config keys are rotated in the config file


def test_runtime_key_limits_and_routes_apply(replicas: list[GatewayProcess]) -> None:
    limited = create_key(replicas[0], name="svc-limited", rpm=2, labels={"env": "test"})["key"]
    assert [chat(replicas[0], limited).status_code for _ in range(2)] == [200, 200]
    time.sleep(PROPAGATION_BOUND_S)  # every replica knows the key now, and shares its counter
    assert statuses(replicas, limited) == [429, 429, 429]
    embed_only = create_key(replicas[0], name="svc-embed-only", routes=["sim-embed"])["key"]
    refused = chat(replicas[0], embed_only)
    assert refused.status_code == 403 and error_of(refused)["code"] == "permission_denied"
    metrics = httpx.get(f"{replicas[0].url}/metrics", timeout=5).text
    assert 'gateway_key_labels{key="svc-limited",label="env",value="test"} 1.0' in metrics


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"team": "x"}, "name"),
        ({"name": "bad-rpm", "rpm": 0}, "rpm"),
        ({"name": "bad-field", "api_key": "x"}, "api_key"),
        ({"name": "bad-period", "budget_period": "week"}, "budget_period"),
        ({"name": "config-user"}, "name"),  # taken by a config key
    ],
)
def test_invalid_key_specs_are_400s(
    replicas: list[GatewayProcess], spec: dict[str, Any], param: str
) -> None:
    response = admin(replicas[0], "POST", "/admin/keys", json=spec)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


def test_a_live_name_cannot_be_taken_twice(replicas: list[GatewayProcess]) -> None:
    create_key(replicas[0], name="svc-unique")
    again = admin(replicas[1], "POST", "/admin/keys", json={"name": "svc-unique"})
    assert again.status_code == 400 and error_of(again)["param"] == "name"


def test_secrets_never_stored_or_logged_in_clear(
    replicas: list[GatewayProcess], redis_server: RedisServer
) -> None:
    created = create_key(replicas[0], name="svc-secret-check", budget_usd=50)
    rotated = admin(replicas[0], "POST", f"/admin/keys/{created['id']}/rotate", json={}).json()
    for gateway in replicas:
        wait_for([gateway], rotated["key"], 200, PROPAGATION_BOUND_S)
        assert chat(gateway, CONFIG_KEY).status_code == 200
    usage_of(replicas[0], "svc-secret-check", 3)
    secrets = [created["key"], rotated["key"], CONFIG_KEY, ADMIN_KEY]
    stored = b"\n".join(redis_dump(redis_server.url))
    assert stored  # the scan did see the records and counters
    for secret in secrets:
        assert secret.encode() not in stored
        for gateway in replicas:
            assert secret not in gateway.log_text()
    listing = admin(replicas[0], "GET", "/admin/keys").text
    one = admin(replicas[0], "GET", f"/admin/keys/{created['id']}").text
    for secret in secrets:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in listing and digest not in listing
        assert secret not in one and digest not in one


def test_spend_report_per_key_team_route_and_day(replicas: list[GatewayProcess]) -> None:
    created = create_key(replicas[0], name="svc-report", team="finance", budget_usd=10)
    for gateway in replicas:
        wait_for([gateway], created["key"], 200, PROPAGATION_BOUND_S)  # 1.00 USD each
    line = usage_of(replicas[1], "svc-report", 3)
    assert line == {
        "key_id": created["id"],
        "key": "svc-report",
        "team": "finance",
        "requests": 3,
        "input_tokens": line["input_tokens"],
        "output_tokens": 30,
        "cost_usd": pytest.approx(3.0),
    }
    assert line["input_tokens"] > 0
    one = admin(replicas[2], "GET", f"/admin/keys/{created['id']}").json()
    assert one["spend"]["spent_usd"] == pytest.approx(3.0)
    report = admin(replicas[0], "GET", "/admin/usage").json()
    assert any(t["team"] == "finance" and t["requests"] == 3 for t in report["by_team"])
    assert any(r["route"] == "sim-chat" for r in report["by_route"])
    bad = admin(replicas[0], "GET", "/admin/usage", params={"since": "yesterday"})
    assert bad.status_code == 400 and error_of(bad)["param"] == "since"


def test_gateway_usage_command_reads_redis(replicas: list[GatewayProcess]) -> None:
    created = create_key(replicas[0], name="svc-cli", team="cli-team")
    assert chat(replicas[0], created["key"]).status_code == 200
    usage_of(replicas[0], "svc-cli", 1)

    def run(*args: str) -> str:
        cmd = [sys.executable, "-m", "gateway", "usage", "--config", str(replicas[0].config_path)]
        done = subprocess.run(
            [*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    report = json.loads(run("--json"))
    row = next(r for r in report["rows"] if r["key"] == "svc-cli")
    assert (row["team"], row["route"], row["requests"]) == ("cli-team", "sim-chat", 1)
    assert row["cost_usd"] == pytest.approx(1.0)
    table = run("--by", "team")
    assert any(line.split()[:2] == ["cli-team", "1"] for line in table.splitlines())
    assert "TOTAL" in table
