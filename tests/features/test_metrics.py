"""/metrics through the real server: Prometheus conventions (checked by promtool),
bounded labels that never carry client input, the token, the separate listener, the
in-flight, retry and cooldown series, and correct sums across several workers."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.telemetry.metrics import Metrics
from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, free_port
from tests.gatewayproc import REPO, GatewayProcess
from tests.promtext import Scrape, eventually, parse, scrape, scrape_until

TOKEN = "metrics-token-CANARY-5e1a"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ADMIN_KEY = "gw-metrics-admin-CANARY-0b7e"
BUDGET_KEY = "gw-metrics-budget-CANARY-91c4"  # key "budgeted", team "t2": 1 USD a month
PRICED = "priced"  # 1.00 USD a request with max_tokens 10 (as tests/features/governance.py)
ASK = [{"role": "user", "content": "Measure me."}]
ROUTES = {"m-ok", "m-dead", "m-dead2", "emb", "chain", "with-dead", "with-dead2", "unknown"}
DEPLOYMENTS = {"main/model-ok", "dead/model-dead", "dead/model-dead2", "main/embed", "none"}
PROVIDERS = {"main", "dead", "none"}


def metrics_config(fake: FakeOpenAI, **metrics: Any) -> dict[str, Any]:
    def provider(base_url: str) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": base_url,
            "api_key": OPENAI_KEY,
            "timeouts": {"connect_s": 1.0, "read_s": 2.0},
        }

    return {
        "auth": {"mode": "keys", "keys": [{"name": "svc", "key": GATEWAY_KEY, "team": "t1"}]},
        "server": {"request_timeout_s": 10, "access_log": False},
        "routing": {"cooldown_failures": 2, "cooldown_s": 60},
        "metrics": {"token": TOKEN, **metrics},
        "providers": {
            "main": provider(f"{fake.base_url}/v1"),
            "dead": provider(f"http://127.0.0.1:{free_port()}/v1"),
        },
        "models": [
            {"name": "m-ok", "provider": "main", "model": "model-ok", "free": True},
            {"name": "m-dead", "provider": "dead", "model": "model-dead", "free": True},
            {"name": "m-dead2", "provider": "dead", "model": "model-dead2", "free": True},
            {
                "name": "emb",
                "provider": "main",
                "model": "embed",
                "mode": "embedding",
                "free": True,
            },
        ],
        "routes": [
            {"name": "chain", "policy": "fallback", "models": ["m-ok", "m-ok"]},
            {"name": "with-dead", "policy": "fallback", "models": ["m-dead", "m-ok"]},
            {"name": "with-dead2", "policy": "fallback", "models": ["m-dead2", "m-ok"]},
        ],
    }


def budget_metrics_config(fake: FakeOpenAI, **metrics: Any) -> dict[str, Any]:
    """`metrics_config` plus a key with a budget, a model with a price and an admin key."""
    config = metrics_config(fake, **metrics)
    budgeted = {"name": "budgeted", "key": BUDGET_KEY, "team": "t2", "budget_usd": 1.0}
    config["auth"] = {
        **config["auth"],
        "keys": [*config["auth"]["keys"], budgeted],
        "admin_keys": [ADMIN_KEY],
    }
    config["providers"]["sim"] = {"kind": "simulated", "simulation": {"output_tokens": 10}}
    config["models"].append(
        {
            "name": PRICED,
            "provider": "sim",
            "model": "sim-1",
            "input_price_per_mtok_usd": 0,
            "output_price_per_mtok_usd": 100_000,
        }
    )
    config["limits"] = {"key_sync_interval_s": 0.2}
    config["database"] = {"flush_interval_s": 0.2}
    return config


def spend_budget(url: str, key: str = BUDGET_KEY) -> tuple[int, int]:
    """One priced request of `key`, then one more: (status, status), e.g. (200, 429)."""
    statuses = []
    for _ in range(2):
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": PRICED, "messages": ASK, "max_tokens": 10},
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        statuses.append(response.status_code)
    return statuses[0], statuses[1]


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(metrics_config(fake_openai))


def send_traffic(url: str, fake: FakeOpenAI) -> None:
    """A little of everything: ok, stream, embeddings, fallback, upstream error, 404."""
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=GATEWAY_KEY, max_retries=0)
    c.chat.completions.create(model="m-ok", messages=ASK)
    list(c.chat.completions.create(model="m-ok", messages=ASK, stream=True))
    c.embeddings.create(model="emb", input="x")
    c.chat.completions.create(model="with-dead", messages=ASK)
    fake.script(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m-ok", messages=ASK)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=ASK)


def test_promtool_finds_nothing_to_lint(gateway: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is not installed (Debian package `prometheus`; scripts/test installs it)"
        )
    send_traffic(gateway.url, fake_openai)
    text = scrape(gateway.url, TOKEN).text
    assert "gateway_requests_total" in text and "gateway_time_to_first_token_seconds" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, b"")


def test_names_follow_prometheus_conventions(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    send_traffic(gateway.url, fake_openai)
    text = scrape(gateway.url, TOKEN).text
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
    assert len(families) >= 15
    for name, kind in families.items():
        assert name.startswith("gateway_"), name
        assert (kind == "counter") == name.endswith("_total"), name
        if kind == "histogram" or any(w in name for w in ("duration", "latency", "time")):
            assert name.endswith(("_seconds", "_timestamp_seconds")), name
        assert "_ms" not in name and "milli" not in name, name
    assert families["gateway_cost_usd_total"] == "counter"
    assert families["gateway_in_flight_requests"] == "gauge"


def test_client_input_never_becomes_a_label(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    canary = f"client-canary-{uuid.uuid4().hex}"
    before = scrape(gateway.url, TOKEN)
    headers = {
        **AUTH,
        "x-request-id": f"{canary}-id",
        "x-gateway-providers": f"{canary}-provider",
        "x-gateway-policy": f"{canary}-policy",
        "x-gateway-task": f"{canary}-task",
    }
    for model in (canary, "m-ok"):
        httpx.post(
            f"{gateway.base_url}/chat/completions",
            json={"model": model, "messages": ASK, "user": canary},
            headers=headers,
        )
    total = before.value("gateway_requests_total") + 2
    after = scrape_until(gateway.url, lambda s: s.value("gateway_requests_total") == total, TOKEN)
    assert canary not in after.text and GATEWAY_KEY not in after.text and TOKEN not in after.text
    unknown = {"route": "unknown", "status_class": "4xx"}
    assert after.value("gateway_requests_total", **unknown) == (
        before.value("gateway_requests_total", **unknown) + 1
    )
    for labels in after.series("gateway_requests_total"):
        assert labels["route"] in ROUTES, labels
        assert labels["deployment"] in DEPLOYMENTS, labels
        assert labels["provider"] in PROVIDERS, labels
    unused = after.series("gateway_cost_usd_total")
    zero = {"provider": "dead", "deployment": "dead/model-dead", "route": "m-dead"}
    assert zero in unused  # zero from the start


def test_metrics_need_the_token(gateway: GatewayProcess) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, AUTH):
        response = httpx.get(f"{gateway.url}/metrics", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})


def test_in_flight_requests_are_counted_while_served(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    def in_flight() -> float:
        return scrape(gateway.url, TOKEN).value("gateway_in_flight_requests", endpoint="chat")

    assert in_flight() == 0
    fake_openai.script(Behaviour(delay_s=1.5))
    c = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    worker = threading.Thread(
        target=c.chat.completions.create, kwargs={"model": "m-ok", "messages": ASK}
    )
    worker.start()
    try:
        assert eventually(lambda: in_flight() == 1, timeout_s=1.4)
    finally:
        worker.join(5)
    assert eventually(lambda: in_flight() == 0)


def test_retries_and_cooldown_are_exported(gateway: GatewayProcess) -> None:
    before = scrape(gateway.url, TOKEN)
    dead = {"deployment": "dead/model-dead2"}
    c = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    started_s = time.time()
    c.chat.completions.create(model="with-dead2", messages=ASK)  # refused, retried, refused
    after = scrape(gateway.url, TOKEN)
    retries = after.value("gateway_retries_total", **dead) - before.value(
        "gateway_retries_total", **dead
    )
    assert retries >= 1
    failures = after.value("gateway_upstream_requests_total", outcome="unavailable", **dead)
    assert (
        failures - before.value("gateway_upstream_requests_total", outcome="unavailable", **dead)
        >= 2
    )
    until_s = after.value("gateway_deployment_cooldown_until_timestamp_seconds", **dead)
    assert until_s >= started_s + 59  # cooldown_s 60: cooling down while > time()
    ok = after.value(
        "gateway_deployment_cooldown_until_timestamp_seconds", deployment="main/model-ok"
    )
    assert ok < time.time()


def test_histograms_count_every_request_once(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    def totals(page: Any) -> tuple[float, ...]:
        chat = {"endpoint": "chat", "route": "chain"}
        return (
            page.value("gateway_request_duration_seconds_count", **chat),
            page.value("gateway_request_duration_seconds_bucket", le="+Inf", **chat),
            page.value("gateway_request_duration_seconds_bucket", le="10.0", **chat),
            page.value("gateway_request_duration_seconds_sum", **chat),
            page.value("gateway_upstream_request_duration_seconds_count"),
        )

    before = totals(scrape(gateway.url, TOKEN))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="chain", messages=ASK)
    after = totals(scrape_until(gateway.url, lambda p: totals(p)[0] >= before[0] + 3, TOKEN))
    count, inf, under_10s, seconds, upstream = (a - b for a, b in zip(after, before, strict=True))
    assert (count, inf, under_10s) == (3, 3, 3)
    assert 0 < seconds < 30
    assert upstream >= 3


def test_separate_metrics_listener(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    port = free_port()
    gw = start_gateway(metrics_config(fake_openai, port=port))
    listener = f"http://127.0.0.1:{port}"
    main = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert main.status_code == 404 and main.json()["error"]["type"] == "invalid_request_error"
    openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY).chat.completions.create(
        model="m-ok", messages=ASK
    )
    # The listener's thread has the loop flush the pending sums before it renders: well
    # within the once-a-second background flush.
    assert eventually(
        lambda: scrape(listener, TOKEN).value("gateway_requests_total", route="m-ok") == 1,
        timeout_s=0.5,
    )
    assert httpx.get(f"{listener}/metrics").status_code == 401
    other = httpx.get(f"{listener}/v1/models", headers={"authorization": f"Bearer {TOKEN}"})
    assert other.status_code == 404 and "error" in other.json()
    post = httpx.post(f"{listener}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert post.status_code == 501 and post.json()["error"]["type"] == "invalid_request_error"


def test_disabled_metrics_are_not_served(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    gw = start_gateway(metrics_config(fake_openai, enabled=False))
    response = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def worker_totals(metrics_dir: Path, tmp_path: Path) -> list[float]:
    """Requests counted by each worker process, from its own multiprocess file."""
    totals = []
    for db in sorted(metrics_dir.glob("counter_*.db")):
        alone = tmp_path / f"alone-{metrics_dir.name}-{db.stem}"  # this one file, nothing else
        alone.mkdir(exist_ok=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        totals.append(parse(generate_latest(registry).decode()).value("gateway_requests_total"))
    return totals


def spread_over_workers(gw: GatewayProcess, metrics_dir: Path, tmp_path: Path) -> int:
    """Concurrent requests on fresh connections until every worker has served some."""
    sent = 0

    def one(_: int) -> None:
        response = httpx.post(
            f"{gw.base_url}/chat/completions", json={"model": "m-ok", "messages": ASK}, headers=AUTH
        )
        assert response.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        for _ in range(30):
            list(pool.map(one, range(8)))
            sent += 8
            totals = worker_totals(metrics_dir, tmp_path)
            if len(totals) == 2 and all(totals):
                return sent
    raise AssertionError(
        f"traffic never reached both workers: {worker_totals(metrics_dir, tmp_path)}"
    )


def test_several_workers_sum_and_start_fresh(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    first = start_gateway(metrics_config(fake_openai), workers=2, env={"TMPDIR": str(temp)})
    (private,) = temp.glob("gateway-metrics-*")  # no PROMETHEUS_MULTIPROC_DIR: a private dir
    sent = spread_over_workers(first, private, tmp_path)
    # a request is counted just after its last byte: give the last ones a moment
    assert eventually(lambda: scrape(first.url, TOKEN).value("gateway_requests_total") == sent)
    assert sum(worker_totals(private, tmp_path)) == sent
    assert scrape(first.url, TOKEN).value("gateway_in_flight_requests") == 0
    stale = tmp_path / "operator-dir"
    shutil.copytree(private, stale)  # as if left by an earlier run
    first.stop()
    assert list(temp.iterdir()) == []  # the private dir went with the server

    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(stale)}
    second = start_gateway(metrics_config(fake_openai, port=port), workers=2, env=env)
    sent = spread_over_workers(second, stale, tmp_path)
    # the supervisor's listener serves the merged view; the earlier run's files are gone
    listener = f"http://127.0.0.1:{port}"
    assert eventually(lambda: scrape(listener, TOKEN).value("gateway_requests_total") == sent)
    second.stop()


def budget(page: Scrape, name: str, period: str = "month") -> tuple[float, float] | None:
    """(budget, spent) of key `name` in a scrape; None when the key has no budget series."""
    labels = {"key": name, "period": period}
    if labels not in page.series("gateway_key_budget_usd"):
        return None
    return (
        page.value("gateway_key_budget_usd", **labels),
        page.value("gateway_key_budget_spent_usd", **labels),
    )


def test_key_budgets_rejections_and_team_cost_are_exported(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    gw = start_gateway(budget_metrics_config(fake_openai))
    first = scrape(gw.url, TOKEN)
    assert budget(first, "budgeted") == (1.0, 0.0)
    assert budget(first, "svc") is None  # no budget, no series
    zero = {"key": "none", "reason": "budget"}
    assert zero in first.series("gateway_rejections_total")  # reasons start at zero

    assert spend_budget(gw.url) == (200, 429)
    # The spend comes from the ledger: written in the background, then read back.
    page = scrape_until(gw.url, lambda p: budget(p, "budgeted") == (1.0, 1.0), TOKEN, 10)
    assert budget(page, "budgeted") == (1.0, 1.0)
    refused = {"reason": "budget", "key": "budgeted"}
    assert page.value("gateway_rejections_total", **refused) == 1
    assert page.value("gateway_key_cost_usd_total", key="budgeted", team="t2") == 1.0
    served = {"route": PRICED, "deployment": "sim/sim-1", "provider": "sim"}
    assert page.value("gateway_requests_total", status_class="2xx", **served) == 1
    refused_request = {"route": PRICED, "deployment": "none", "provider": "none"}
    assert page.value("gateway_requests_total", status_class="4xx", **refused_request) == 1

    # A runtime key's budget shows at once (the admin refreshes the mirror before it
    # answers) and goes when the key is revoked.
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(
        f"{gw.url}/admin/keys",
        json={"name": "runtime-budget", "budget_usd": 5, "budget_period": "day"},
        headers=admin,
    ).json()
    assert budget(scrape(gw.url, TOKEN), "runtime-budget", "day") == (5.0, 0.0)
    httpx.post(f"{gw.url}/admin/keys/{created['id']}/revoke", headers=admin).raise_for_status()
    after = scrape(gw.url, TOKEN)
    assert budget(after, "runtime-budget", "day") is None
    assert budget(after, "budgeted") == (1.0, 1.0)


def test_upstream_latency_is_split_by_stream(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    def counts(page: Scrape) -> tuple[float, float]:
        name, ok = "gateway_upstream_request_duration_seconds_count", "main/model-ok"
        return (
            page.value(name, deployment=ok, stream="false"),
            page.value(name, deployment=ok, stream="true"),
        )

    before = counts(scrape(gateway.url, TOKEN))
    c = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    c.chat.completions.create(model="m-ok", messages=ASK)
    c.chat.completions.create(model="m-ok", messages=ASK)
    list(c.chat.completions.create(model="m-ok", messages=ASK, stream=True))
    want = (before[0] + 2, before[1] + 1)
    assert counts(scrape_until(gateway.url, lambda p: counts(p) == want, TOKEN)) == want


def test_a_failed_request_is_filed_under_the_deployment_tried(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    """Not under provider "none": that is for requests no deployment was tried for."""
    tried = {"route": "m-ok", "deployment": "main/model-ok", "provider": "main"}
    failed = {**tried, "status_class": "5xx"}
    before = scrape(gateway.url, TOKEN).value("gateway_requests_total", **failed)
    fake_openai.script(Behaviour(status=500))
    c = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m-ok", messages=ASK)
    page = scrape_until(
        gateway.url, lambda p: p.value("gateway_requests_total", **failed) == before + 1, TOKEN
    )
    assert page.value("gateway_requests_total", **failed) == before + 1
    nowhere = {"provider": "none", "status_class": "5xx"}
    assert page.value("gateway_requests_total", **nowhere) == 0


def test_overhead_buckets_reach_ten_seconds(gateway: GatewayProcess) -> None:
    page = scrape(gateway.url, TOKEN)
    bounds = {labels["le"] for labels in page.series("gateway_overhead_seconds_bucket")}
    assert {"0.0001", "0.1", "1.0", "10.0", "+Inf"} <= bounds


def test_several_workers_report_budgets_once(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> None:
    """Every worker sets the same budget gauges (from the same ledger): the merged view
    shows each once, not summed; a revoked key's budget stops counting (NaN: the workers'
    files keep every series they wrote)."""
    gw = start_gateway(budget_metrics_config(fake_openai), workers=2)
    assert budget(scrape(gw.url, TOKEN), "budgeted") == (1.0, 0.0)
    response = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": PRICED, "messages": ASK, "max_tokens": 10},
        headers={"authorization": f"Bearer {BUDGET_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200
    page = scrape_until(gw.url, lambda p: budget(p, "budgeted") == (1.0, 1.0), TOKEN, 10)
    assert budget(page, "budgeted") == (1.0, 1.0)

    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(
        f"{gw.url}/admin/keys", json={"name": "runtime-budget", "budget_usd": 5}, headers=admin
    ).json()
    page = scrape_until(gw.url, lambda p: budget(p, "runtime-budget") == (5.0, 0.0), TOKEN)
    assert budget(page, "runtime-budget") == (5.0, 0.0)
    httpx.post(f"{gw.url}/admin/keys/{created['id']}/revoke", headers=admin).raise_for_status()

    def gone(page: Scrape) -> bool:
        left = budget(page, "runtime-budget")
        return left is None or all(math.isnan(v) for v in left)

    assert gone(scrape_until(gw.url, gone, TOKEN))
    assert budget(scrape(gw.url, TOKEN), "budgeted") == (1.0, 1.0)


def test_readme_lists_every_metric() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in registry.collect()
    }
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(gateway_\w+)` \|", readme, re.MULTILINE))
    assert listed == exported
