"""Operators see and end cooldowns: GET/DELETE /admin/cooldowns (admin keys only, answers
fit the OpenAPI description), a clear that reaches every replica sharing Redis and that
no replica's next sync undoes, and `gateway cooldowns` reading and clearing the shared
state from outside."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import redis
import yaml
from prometheus_client import CollectorRegistry

from gateway.config import RedisConfig
from gateway.redis.client import shared_redis
from gateway.routing.cooldowns import clear_shared, read_shared
from gateway.routing.stats import StatsStore
from gateway.routing.stats_sync import StatsSync
from gateway.telemetry.metrics import Metrics
from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.governance import ADMIN_KEY, admin, bearer, error_of
from tests.gatewayproc import REPO, GatewayProcess, RedisServer
from tests.redis_cluster import RedisBackend

SYNC_S = 0.2  # routing.stats_sync_interval_s
STEADY = "sim/steady-model"


def cooldown_config(
    fake: FakeOpenAI, flaky: str, backend: RedisBackend | None = None
) -> dict[str, Any]:
    """Route `chain`: the flaky deployment (the fake OpenAI, scripted) first, a simulated
    one behind it. Two failures cool the flaky one down for a minute."""
    config: dict[str, Any] = {
        "server": {"request_timeout_s": 10},
        "auth": {
            "mode": "keys",
            "keys": [{"name": "app", "key": GATEWAY_KEY}],
            "admin_keys": [ADMIN_KEY],
        },
        "routing": {"cooldown_failures": 2, "cooldown_s": 60, "stats_sync_interval_s": SYNC_S},
        "providers": {
            flaky: {
                "kind": "openai",
                "base_url": f"{fake.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": {"read_s": 2.0, "connect_s": 1.0},
            },
            "sim": {"kind": "simulated"},
        },
        "models": [
            {
                "name": "m-flaky",
                "provider": flaky,
                "model": "flaky-model",
                "input_price_per_mtok_usd": 0.1,
                "output_price_per_mtok_usd": 0.4,
            },
            {
                "name": "m-steady",
                "provider": "sim",
                "model": "steady-model",
                "input_price_per_mtok_usd": 1.0,
                "output_price_per_mtok_usd": 2.0,
            },
        ],
        "routes": [{"name": "chain", "policy": "fallback", "models": ["m-flaky", "m-steady"]}],
    }
    if backend is not None:
        config["redis"] = backend.section(socket_timeout_s=2, operation_deadline_s=3)
    return config


def unique_provider() -> str:
    """A provider (so deployment id) of the test's own: the session's Redis is shared."""
    return f"flaky{uuid.uuid4().hex[:8]}"


def served_by(gateway: GatewayProcess) -> str:
    body = {"model": "chain", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=bearer(GATEWAY_KEY), timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["x-gateway-deployment"]


def trip(gateway: GatewayProcess, fake: FakeOpenAI, flaky_id: str) -> None:
    """Two 500s in a row: the flaky deployment cools down (each request still served)."""
    calls = fake.calls
    fake.script(Behaviour(status=500), Behaviour(status=500))
    assert [served_by(gateway) for _ in range(2)] == [STEADY, STEADY]
    assert fake.calls == calls + 2
    assert served_by(gateway) == STEADY and fake.calls == calls + 2  # skipped, not tried


def cooldowns(gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
    answer = admin(gateway, "GET", "/admin/cooldowns")
    assert answer.status_code == 200, answer.text
    return {entry["deployment"]: entry for entry in answer.json()["data"]}


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def fits(spec: dict[str, Any], path: str, method: str, answer: httpx.Response) -> None:
    """`answer` fits the schema the OpenAPI description gives for its status."""
    response = spec["paths"][path][method]["responses"][str(answer.status_code)]
    schema = response["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({"components": spec["components"], **schema}).validate(
        answer.json()
    )


def test_admin_lists_and_ends_cooldowns(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    flaky = unique_provider()
    flaky_id = f"{flaky}/flaky-model"
    gateway = start_gateway(cooldown_config(fake_openai, flaky))
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    assert {"get", "delete"} <= set(spec["paths"]["/admin/cooldowns"])
    assert "delete" in spec["paths"]["/admin/cooldowns/{deployment_id}"]

    # A 429 with retry-after cools it down at once, for that long; then it is half-open.
    fake_openai.script(Behaviour(status=429, headers={"retry-after": "1"}))
    assert served_by(gateway) == STEADY
    listed = admin(gateway, "GET", "/admin/cooldowns")
    fits(spec, "/admin/cooldowns", "get", listed)
    entry = {e["deployment"]: e for e in listed.json()["data"]}[flaky_id]
    assert entry["state"] == "cooling_down" and 0 < entry["seconds_left"] <= 1
    assert entry["provider"] == flaky and entry["consecutive_failures"] == 1
    # The failure's outcome, once gateway/routing/failures.py passes it to the store.
    assert entry["reason"] in (None, "rate_limited")
    time.sleep(1.1)
    entry = cooldowns(gateway)[flaky_id]
    assert entry["state"] == "half_open" and entry["seconds_left"] == 0
    assert entry["cooling_down_until"] <= time.time()
    cleared = admin(gateway, "DELETE", f"/admin/cooldowns/{flaky_id}")
    fits(spec, "/admin/cooldowns/{deployment_id}", "delete", cleared)
    assert [(e["deployment"], e["state"]) for e in cleared.json()["data"]] == [
        (flaky_id, "half_open")
    ]
    assert flaky_id not in cooldowns(gateway)

    # The clear restarted the failure streak: two more failures to trip it.
    started = time.time()
    trip(gateway, fake_openai, flaky_id)
    entry = cooldowns(gateway)[flaky_id]
    assert entry["state"] == "cooling_down" and entry["consecutive_failures"] == 2
    assert started + 59 < entry["cooling_down_until"] <= time.time() + 60
    assert 55 < entry["seconds_left"] <= 60
    assert entry["reason"] in (None, "unavailable")

    # Ended: served again at once by the deployment the request used to skip.
    cleared = admin(gateway, "DELETE", f"/admin/cooldowns/{flaky_id}")
    assert cleared.status_code == 200
    assert [e["deployment"] for e in cleared.json()["data"]] == [flaky_id]
    assert cooldowns(gateway) == {}
    calls = fake_openai.calls
    assert served_by(gateway) == flaky_id and fake_openai.calls == calls + 1

    trip(gateway, fake_openai, flaky_id)
    everything = admin(gateway, "DELETE", "/admin/cooldowns")
    fits(spec, "/admin/cooldowns", "delete", everything)
    assert [e["deployment"] for e in everything.json()["data"]] == [flaky_id]
    assert served_by(gateway) == flaky_id
    again = admin(gateway, "DELETE", f"/admin/cooldowns/{flaky_id}")
    assert again.status_code == 200 and again.json()["data"] == []  # nothing left to end


def test_cooldowns_are_for_admins_and_unknown_deployments_are_404(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    gateway = start_gateway(cooldown_config(fake_openai, unique_provider()))
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    for method, path, template in (
        ("GET", "/admin/cooldowns", "/admin/cooldowns"),
        ("DELETE", "/admin/cooldowns", "/admin/cooldowns"),
        ("DELETE", f"/admin/cooldowns/{STEADY}", "/admin/cooldowns/{deployment_id}"),
    ):
        url = f"{gateway.url}{path}"
        as_user = httpx.request(method, url, headers=bearer(GATEWAY_KEY))
        assert as_user.status_code == 403 and error_of(as_user)["code"] == "permission_denied"
        fits(spec, template, method.lower(), as_user)
        anonymous = httpx.request(method, url)
        assert anonymous.status_code == 401 and error_of(anonymous)["type"]
        fits(spec, template, method.lower(), anonymous)
    missing = admin(gateway, "DELETE", "/admin/cooldowns/nowhere/no-model")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found" and "nowhere/no-model" in missing.text
    fits(spec, "/admin/cooldowns/{deployment_id}", "delete", missing)


def test_a_clear_reaches_every_replica_and_stays(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    redis_backend: RedisBackend,
) -> None:
    flaky = unique_provider()
    flaky_id = f"{flaky}/flaky-model"
    config = cooldown_config(fake_openai, flaky, redis_backend)
    first, second = start_gateway(config), start_gateway(config)

    trip(first, fake_openai, flaky_id)
    wait_for(lambda: flaky_id in cooldowns(second), "the cooldown reaches the other replica")
    entry = cooldowns(second)[flaky_id]
    assert entry["state"] == "cooling_down" and entry["seconds_left"] > 55
    assert entry["consecutive_failures"] == 0  # the streak is the first replica's own
    assert entry["reason"] in (None, "unavailable")
    calls = fake_openai.calls
    assert served_by(second) == STEADY and fake_openai.calls == calls

    cleared = admin(second, "DELETE", f"/admin/cooldowns/{flaky_id}")
    assert cleared.status_code == 200
    assert [e["deployment"] for e in cleared.json()["data"]] == [flaky_id]
    assert flaky_id not in cooldowns(second)
    wait_for(lambda: flaky_id not in cooldowns(first), "the clear reaches the first replica")
    # Several sync rounds later, no replica brought the old deadline back.
    time.sleep(SYNC_S * 5)
    assert flaky_id not in cooldowns(first) and flaky_id not in cooldowns(second)
    with redis_backend.client() as client:
        assert client.hget("gw:{stats}:cooldown", flaky_id) is None
        assert float(client.hget("gw:{stats}:cleared", flaky_id) or 0) > 0
    assert served_by(first) == flaky_id and served_by(second) == flaky_id
    assert fake_openai.calls == calls + 2

    # A cooldown that begins after the clear is shared as before.
    trip(first, fake_openai, flaky_id)
    wait_for(lambda: flaky_id in cooldowns(second), "a new cooldown after the clear")


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "cooldowns", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )


def test_cli_lists_and_ends_the_shared_cooldowns(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    redis_backend: RedisBackend,
    tmp_path: Path,
) -> None:
    flaky = unique_provider()
    flaky_id = f"{flaky}/flaky-model"
    gateway = start_gateway(cooldown_config(fake_openai, flaky, redis_backend))
    trip(gateway, fake_openai, flaky_id)

    def listed() -> dict[str, dict[str, Any]]:
        out = cli(gateway.config_path, "--json")
        assert out.returncode == 0, out.stderr
        return {e["deployment"]: e for e in json.loads(out.stdout)["data"]}

    wait_for(lambda: flaky_id in listed(), "the cooldown is published", timeout_s=10)
    entry = listed()[flaky_id]
    assert entry["provider"] == flaky and entry["state"] == "cooling_down"
    assert 50 < entry["seconds_left"] <= 60 and entry["cooling_down_until"] > time.time() + 50
    assert entry["consecutive_failures"] is None  # each process's own: not shared
    assert entry["reason"] in (None, "unavailable")
    table = cli(gateway.config_path)
    assert table.returncode == 0 and "seconds_left" in table.stdout
    assert any(flaky_id in line and "cooling_down" in line for line in table.stdout.splitlines())

    unknown = cli(gateway.config_path, "--clear", "nowhere/no-model")
    assert unknown.returncode == 2 and "nowhere/no-model" in unknown.stderr
    cleared = cli(gateway.config_path, "--clear", flaky_id, "--json")
    assert cleared.returncode == 0, cleared.stderr
    assert [e["deployment"] for e in json.loads(cleared.stdout)["data"]] == [flaky_id]
    wait_for(lambda: flaky_id not in cooldowns(gateway), "the gateway applies the clear")
    assert served_by(gateway) == flaky_id
    assert flaky_id not in listed()

    trip(gateway, fake_openai, flaky_id)
    wait_for(lambda: flaky_id in listed(), "the new cooldown is published", timeout_s=10)
    everything = cli(gateway.config_path, "--clear-all")
    assert everything.returncode == 0 and flaky_id in everything.stdout
    wait_for(lambda: flaky_id not in cooldowns(gateway), "the gateway applies the clear-all")

    # Without Redis the state lives in each gateway process: nothing to read from outside.
    alone = yaml.safe_load(gateway.config_path.read_text())
    del alone["redis"]
    (tmp_path / "alone.yaml").write_text(yaml.safe_dump(alone))
    out = cli(tmp_path / "alone.yaml")
    assert out.returncode == 2 and "/admin/cooldowns" in out.stderr


def test_a_replica_that_has_not_heard_of_a_clear_cannot_undo_it(
    redis_server: RedisServer,
) -> None:
    """The races, in process and in order: a replica publishes the deadline it began
    before a clear it has not read yet; a replica merges a snapshot read before its own
    clear. Neither brings the cooldown back; a cooldown begun after the clear stands."""
    url = redis_server.url.rsplit("/", 1)[0] + "/8"  # a database of its own
    redis.Redis.from_url(url).flushdb()

    async def run() -> None:
        shared = shared_redis(RedisConfig(url=url), Metrics(CollectorRegistry()))
        one, two = (StatsStore(cooldown_failures=1, cooldown_s=60) for _ in range(2))
        sync_one, sync_two = StatsSync(one, shared, 1.0), StatsSync(two, shared, 1.0)
        try:
            one.failure("d", reason="unavailable")
            await sync_one.sync_once()
            stale = await read_shared(shared.client)  # what `two` reads before its clear
            await sync_two.sync_once()
            assert two.in_cooldown("d") and two.get("d").reason == "unavailable"

            at = time.time()
            removed = await clear_shared(shared.client, ["d"], at)
            assert removed["d"][0] == one.get("d").cooldown_until
            assert two.clear("d", at)
            sync_two._merge(stale, [])  # a snapshot from before its own clear
            assert not two.in_cooldown("d")
            await sync_one.sync_once()  # publishes its old deadline first: refused
            assert not one.in_cooldown("d") and one.get("d").consecutive_failures == 0
            assert (await read_shared(shared.client)).deadlines == {}
            await sync_two.sync_once()
            assert not two.in_cooldown("d")

            one.failure("d")  # after the clear: shared as any cooldown
            await sync_one.sync_once()
            await sync_two.sync_once()
            assert two.in_cooldown("d")
            assert not two.clear("d", at)  # the same clear again changes nothing
        finally:
            await shared.aclose()

    asyncio.run(run())
