"""Rule 12 across a whole mini-battery: canary secrets appear in no output and no Redis value.

One gateway (Redis, cache, limits and metrics token on) fronts four fakes that only
accept distinctive per-run canary provider keys. A battery drives every endpoint, on
every provider kind, through the happy paths and the error paths: upstream 401/403,
429, 500, timeout, refused, mid-stream death, bad input, wrong gateway keys, and
provider error bodies, headers and in-stream error events that echo the provider key
back (some real providers do). Every response (status line, headers, body) is
recorded; then the recorded responses, the gateway's log and /metrics are grepped for
every canary and for the SHA-256 of every gateway-side key, and Redis for every raw
canary (the key store keeps SHA-256 digests as lookup keys by design: storage, not
output). The existing feature tests check single paths; this checks all artefacts.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.anthropic_fake import AnthropicBehaviour, FakeAnthropic
from tests.fakes.azure_fake import FakeAzure
from tests.fakes.gemini_fake import FakeGemini, GeminiBehaviour
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, FakeServer, free_port
from tests.features.governance import redis_dump
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.promtext import parse

RUN = secrets.token_hex(6)  # fresh canaries per run: a hit can only come from this run
OPENAI_CANARY = f"sk-canary-openai-{RUN}"
ANTHROPIC_CANARY = f"sk-ant-canary-anthropic-{RUN}"
GEMINI_CANARY = f"AIza-canary-gemini-{RUN}"
AZURE_CANARY = f"azure-canary-{RUN}"
GATEWAY_CANARY = f"gw-canary-user-{RUN}"
TIGHT_CANARY = f"gw-canary-tight-{RUN}"  # rpm 1: its second request is a limits 429
ADMIN_CANARY = f"gw-canary-admin-{RUN}"
METRICS_CANARY = f"metrics-canary-{RUN}"
WRONG_CANARY = f"gw-canary-wrong-{RUN}"  # never valid: the 401 must not echo it
PROVIDER_CANARIES = {
    "openai": OPENAI_CANARY,
    "anthropic": ANTHROPIC_CANARY,
    "gemini": GEMINI_CANARY,
    "azure": AZURE_CANARY,
}
GATEWAY_SIDE = {
    "gateway key": GATEWAY_CANARY,
    "tight key": TIGHT_CANARY,
    "admin key": ADMIN_CANARY,
    "metrics token": METRICS_CANARY,
    "wrong key": WRONG_CANARY,
}
ASK = [{"role": "user", "content": "Say hello."}]
AZURE_DEPLOYMENTS = ("chat-prod", "embed-prod")


@dataclass
class Recorded:
    label: str
    status: int
    text: str  # status, headers and body as the client saw them
    allowed: frozenset[str] = frozenset()  # secrets this response is meant to carry


@dataclass
class Battery:
    responses: list[Recorded] = field(default_factory=list)
    runtime_keys: list[str] = field(default_factory=list)

    def record(
        self, label: str, response: httpx.Response, allowed: frozenset[str] = frozenset()
    ) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        body = response.read().decode(errors="replace")
        self.responses.append(
            Recorded(label, response.status_code, f"{headers}\n\n{body}", allowed)
        )

    def status(self, label: str) -> int:
        return next(r.status for r in self.responses if r.label == label)


@dataclass
class Fakes:
    openai: FakeOpenAI
    anthropic: FakeAnthropic
    gemini: FakeGemini
    azure: FakeAzure

    def all(self) -> list[FakeServer]:
        return [self.openai, self.anthropic, self.gemini, self.azure]


@pytest.fixture(scope="module")
def canary_fakes() -> Iterator[Fakes]:
    fakes = Fakes(
        FakeOpenAI(api_key=OPENAI_CANARY).start(),
        FakeAnthropic(api_key=ANTHROPIC_CANARY).start(),
        FakeGemini(api_key=GEMINI_CANARY).start(),
        FakeAzure(api_key=AZURE_CANARY, deployments=AZURE_DEPLOYMENTS).start(),
    )
    yield fakes
    for fake in fakes.all():
        fake.stop()


@pytest.fixture(scope="module")
def canary_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("canary-redis")).start()
    yield server
    server.stop()


def canary_config(fakes: Fakes, redis_url: str) -> dict[str, Any]:
    timeouts = {"connect_s": 1.0, "read_s": 1.0}

    def provider(kind: str, base_url: str, key: str) -> dict[str, Any]:
        return {"kind": kind, "base_url": base_url, "api_key": key, "timeouts": timeouts}

    kinds = {
        "oai": provider("openai", f"{fakes.openai.base_url}/v1", OPENAI_CANARY),
        "ant": provider("anthropic", fakes.anthropic.base_url, ANTHROPIC_CANARY),
        "gem": provider("gemini", f"{fakes.gemini.base_url}/v1beta", GEMINI_CANARY),
        "az": provider("azure", fakes.azure.base_url, AZURE_CANARY),
    }
    # An upstream auth failure cools its deployment down at once: each auth case gets
    # a deployment of its own, so the happy paths keep theirs.
    providers = {**kinds, **{f"{n}-auth": dict(p) for n, p in kinds.items()}}
    providers["oai-403"] = dict(kinds["oai"])
    providers["dead"] = provider("openai", f"http://127.0.0.1:{free_port()}/v1", OPENAI_CANARY)
    chat_models = {"gpt": "gpt-4o-mini", "claude": "claude-sonnet-4-5"}
    chat_models |= {"gemini": "gemini-2.5-flash", "azure": "chat-prod"}
    models: list[dict[str, Any]] = []
    for (name, model), prov in zip(chat_models.items(), kinds, strict=True):
        free = model == "chat-prod"  # an Azure deployment name: no catalog price
        models.append({"name": name, "provider": prov, "model": model, "free": free})
        models.append(
            {"name": f"{name}-auth", "provider": f"{prov}-auth", "model": model, "free": free}
        )
    models += [
        {"name": "gpt-403", "provider": "oai-403", "model": "gpt-4o-mini"},
        {"name": "dead", "provider": "dead", "model": "gpt-4o-mini"},
        {"name": "gpt-embed", "provider": "oai", "model": "text-embedding-3-small"},
        {"name": "gemini-embed", "provider": "gem", "model": "gemini-embedding-001"},
        {"name": "azure-embed", "provider": "az", "model": "embed-prod", "free": True},
    ]
    for embed in models[-3:]:
        embed["mode"] = "embedding"
    return {
        # The most verbose log an operator can ask for must be clean too.
        "server": {"request_timeout_s": 5, "log_level": "debug"},
        "auth": {
            "mode": "keys",
            "keys": [
                {"name": "canary", "key": GATEWAY_CANARY, "team": "blue", "budget_usd": 1000},
                {"name": "tight", "key": TIGHT_CANARY, "rpm": 1},
            ],
            "admin_keys": [ADMIN_CANARY],
        },
        "metrics": {"token": METRICS_CANARY},
        "cache": {"enabled": True},
        "redis": {"url": redis_url, "socket_timeout_s": 2, "operation_deadline_s": 3},
        "limits": {"key_sync_interval_s": 0.2},
        "routing": {
            "same_deployment_retries": 0,
            "cooldown_failures": 1000,
            "max_retry_after_s": 0,
        },
        "providers": providers,
        "models": models,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def sdk(gateway: GatewayProcess, key: str = GATEWAY_CANARY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=10)


def echo(key: str) -> str:
    return f"Incorrect API key provided: {key}. You can find your API key at https://example."


# --- the battery -----------------------------------------------------------------------


def sdk_chat(battery: Battery, client: openai.OpenAI, label: str, **body: Any) -> None:
    body = {"messages": ASK, **body}
    try:
        raw = client.chat.completions.with_raw_response.create(**body)
        battery.record(label, raw.http_response)
    except openai.APIStatusError as exc:
        battery.record(label, exc.response)


def sdk_stream(battery: Battery, client: openai.OpenAI, label: str, **body: Any) -> None:
    body = {"messages": ASK, "stream": True, "stream_options": {"include_usage": True}, **body}
    try:
        with client.chat.completions.with_streaming_response.create(**body) as response:
            battery.record(label, response.http_response)
    except openai.APIStatusError as exc:
        battery.record(label, exc.response)


def sdk_embed(battery: Battery, client: openai.OpenAI, label: str, model: str) -> None:
    raw = client.embeddings.with_raw_response.create(model=model, input=["a", "b"])
    battery.record(label, raw.http_response)


def happy_paths(battery: Battery, gateway: GatewayProcess) -> None:
    with sdk(gateway) as client:
        for model in ("gpt", "claude", "gemini", "azure"):
            sdk_chat(battery, client, f"chat {model}", model=model)
            sdk_chat(battery, client, f"chat {model} again (cache)", model=model)
            sdk_stream(battery, client, f"stream {model}", model=model)
        for model in ("gpt-embed", "gemini-embed", "azure-embed"):
            sdk_embed(battery, client, f"embed {model}", model)
        battery.record("models", client.models.with_raw_response.list().http_response)
        one = client.models.with_raw_response.retrieve("claude")
        battery.record("model", one.http_response)
    explain = {"model": "gpt", "messages": ASK}
    post(battery, gateway, "explain", "/v1/route/explain", json=explain)
    for path in ("/healthz", "/readyz"):
        battery.record(path, httpx.get(f"{gateway.url}{path}", timeout=5))


def post(
    battery: Battery,
    gateway: GatewayProcess,
    label: str,
    path: str,
    key: str = GATEWAY_CANARY,
    **kw: Any,
) -> httpx.Response:
    response = httpx.post(f"{gateway.url}{path}", headers=bearer(key), timeout=10, **kw)
    battery.record(label, response)
    return response


def openai_error(status: int, key: str = OPENAI_CANARY, **headers: str) -> Behaviour:
    """An error answer with the key in every body field, and in headers too."""
    body = {"error": {"message": echo(key), "type": key, "param": key, "code": key}}
    echoed = {"x-echo-key": key, "www-authenticate": f"Bearer {key}", **headers}
    return Behaviour(status=status, body=body, headers=echoed)


def anthropic_error(status: int, kind: str) -> Behaviour:
    body = {"type": "error", "error": {"type": kind, "message": echo(ANTHROPIC_CANARY)}}
    return Behaviour(status=status, body=body, headers={"x-echo-key": ANTHROPIC_CANARY})


def upstream_faults(battery: Battery, gateway: GatewayProcess, fakes: Fakes) -> None:
    o, a, g, z = fakes.openai, fakes.anthropic, fakes.gemini, fakes.azure
    # (label, fake, scripted behaviour, model, stream?)
    cases: list[tuple[str, FakeServer, Behaviour, str, bool]] = [
        ("openai 401 echo", o, openai_error(401), "gpt-auth", False),
        ("openai 403 echo", o, openai_error(403), "gpt-403", False),
        ("openai 429 echo", o, openai_error(429, **{"retry-after": "0"}), "gpt", False),
        ("openai 500 echo", o, openai_error(500), "gpt", False),
        ("openai 400 echo", o, openai_error(400), "gpt", False),
        ("openai timeout", o, Behaviour(hang_s=3), "gpt", False),
        ("openai stream dies", o, Behaviour(drop_after_chunks=2), "gpt", True),
        (
            "anthropic 401 echo",
            a,
            anthropic_error(401, "authentication_error"),
            "claude-auth",
            False,
        ),
        ("anthropic 400 echo", a, anthropic_error(400, "invalid_request_error"), "claude", False),
        ("anthropic 529 echo", a, anthropic_error(529, "overloaded_error"), "claude", True),
        (
            "anthropic stream error echo",
            a,
            AnthropicBehaviour(error_event_after=4, error_message=echo(ANTHROPIC_CANARY)),
            "claude",
            True,
        ),
        ("gemini key invalid echo", g, gemini_error(400, "API_KEY_INVALID"), "gemini-auth", False),
        ("gemini 400 echo", g, gemini_error(400, None), "gemini", False),
        ("gemini 500 echo", g, gemini_error(500, None), "gemini", True),
        (
            "gemini stream error echo",
            g,
            GeminiBehaviour(error_event_after=1, error_message=echo(GEMINI_CANARY)),
            "gemini",
            True,
        ),
        ("azure 401 echo", z, openai_error(401, AZURE_CANARY), "azure-auth", False),
        ("azure 400 echo", z, openai_error(400, AZURE_CANARY), "azure", True),
    ]
    with sdk(gateway) as client:
        for label, fake, behaviour, model, stream in cases:
            fake.script(behaviour)
            call = sdk_stream if stream else sdk_chat
            call(battery, client, label, model=model, messages=[{"role": "user", "content": label}])
        sdk_chat(battery, client, "refused", model="dead")


def gemini_error(status: int, reason: str | None) -> Behaviour:
    """Google's shape (a one-element array); `reason` API_KEY_* marks an account problem."""
    names = {400: "INVALID_ARGUMENT", 500: "INTERNAL"}
    error: dict[str, Any] = {
        "code": status,
        "message": echo(GEMINI_CANARY),
        "status": names[status],
    }
    if reason is not None:
        detail = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}
        error["details"] = [{**detail, "metadata": {"key": GEMINI_CANARY}}]
    return Behaviour(status=status, body=[{"error": error}])


def client_faults(battery: Battery, gateway: GatewayProcess) -> None:
    chat = f"{gateway.base_url}/chat/completions"
    body = {"model": "gpt", "messages": ASK}

    def send(label: str, headers: dict[str, str], **kw: Any) -> None:
        battery.record(label, httpx.post(chat, headers=headers, timeout=10, **kw))

    send("wrong key", bearer(WRONG_CANARY), json=body)
    send("wrong scheme", {"authorization": f"Token {GATEWAY_CANARY}"}, json=body)
    send("key as x-api-key", {"x-api-key": WRONG_CANARY}, json=body)
    send("tight 1", bearer(TIGHT_CANARY), json=body)
    send("tight 2 (rpm)", bearer(TIGHT_CANARY), json=body)
    send("body api_key", bearer(GATEWAY_CANARY), json={**body, "api_key": GATEWAY_CANARY})
    egress = {"api_base": "http://x", "extra_headers": {"authorization": GATEWAY_CANARY}}
    send("body api_base", bearer(GATEWAY_CANARY), json={**body, **egress})
    truncated = f'{{"model": "gpt", "messages": [], "user": "{GATEWAY_CANARY}'.encode()
    send("truncated json", bearer(GATEWAY_CANARY), content=truncated)
    send("key as model", bearer(GATEWAY_CANARY), json={**body, "model": f"x{WRONG_CANARY}"})
    # The client's own model string, echoed back to that client: not a disclosure (the
    # log and metrics checks still cover it).
    battery.responses[-1].allowed = frozenset({WRONG_CANARY})
    metrics = f"{gateway.url}/metrics"
    battery.record("metrics no token", httpx.get(metrics, timeout=5))
    wrong = httpx.get(metrics, headers=bearer(WRONG_CANARY), timeout=5)
    battery.record("metrics wrong token", wrong)


def admin_paths(battery: Battery, gateway: GatewayProcess) -> None:
    def admin(
        label: str,
        method: str,
        path: str,
        key: str = ADMIN_CANARY,
        **kw: Any,
    ) -> httpx.Response:
        response = httpx.request(
            method, f"{gateway.url}{path}", headers=bearer(key), timeout=10, **kw
        )
        battery.record(label, response)
        return response

    created = admin(
        "create key",
        "POST",
        "/admin/keys",
        json={"name": "runtime", "team": "blue", "budget_usd": 5},
    )
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["key"], created.json()["id"]
    battery.runtime_keys.append(secret)
    battery.responses[-1].allowed = frozenset({secret})  # shown once, by design
    with sdk(gateway, secret) as client:
        sdk_chat(battery, client, "runtime chat", model="gpt")
        sdk_stream(battery, client, "runtime stream", model="claude")
    admin("list keys", "GET", "/admin/keys")
    admin("get key", "GET", f"/admin/keys/{key_id}")
    rotated = admin("rotate key", "POST", f"/admin/keys/{key_id}/rotate", json={}).json()["key"]
    battery.runtime_keys.append(rotated)
    battery.responses[-1].allowed = frozenset({rotated})
    with sdk(gateway, rotated) as client:
        sdk_chat(battery, client, "rotated chat", model="gemini")
    admin("revoke key", "POST", f"/admin/keys/{key_id}/revoke")
    post(
        battery,
        gateway,
        "revoked key",
        "/v1/chat/completions",
        key=rotated,
        json={"model": "gpt", "messages": ASK},
    )
    admin("usage", "GET", "/admin/usage")
    admin("purge tenant", "POST", "/admin/cache/purge", json={"tenant": "team:blue"})
    admin("purge all", "POST", "/admin/cache/purge")
    admin("admin with user key", "GET", "/admin/keys", key=GATEWAY_CANARY)
    admin("admin with wrong key", "GET", "/admin/keys", key=WRONG_CANARY)
    admin("admin bad body", "POST", "/admin/keys", json={"name": "x", "key": ADMIN_CANARY})


@dataclass
class Artefacts:
    battery: Battery
    log: str
    metrics: str
    redis: list[bytes]
    database: list[bytes]  # every value of every table of the system of record


def sql_dump(path: Path) -> list[bytes]:
    out: list[bytes] = []
    with closing(sqlite3.connect(path)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                out += [str(value).encode() for value in row if value is not None]
    return out


@pytest.fixture(scope="module")
def artefacts(
    start_gateway: Callable[..., GatewayProcess],
    canary_fakes: Fakes,
    canary_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Artefacts:
    database = tmp_path_factory.mktemp("canary-db") / "gateway.db"
    config = canary_config(canary_fakes, canary_redis.url)
    config["database"] = {"url": f"sqlite+aiosqlite:///{database}"}
    gateway = start_gateway(config)
    battery = Battery()
    happy_paths(battery, gateway)
    upstream_faults(battery, gateway, canary_fakes)
    client_faults(battery, gateway)
    admin_paths(battery, gateway)
    scrape = drained_scrape(gateway)  # every access line and settlement is written by now
    battery.record("metrics", scrape)
    # An admin read of the request log writes every buffered row first.
    logged = httpx.get(
        f"{gateway.url}/admin/requests", headers={"authorization": f"Bearer {ADMIN_CANARY}"}
    )
    assert logged.status_code == 200 and logged.json()["data"]
    return Artefacts(
        battery,
        gateway.log_text(),
        scrape.text,
        redis_dump(canary_redis.url),
        sql_dump(database),
    )


def drained_scrape(gateway: GatewayProcess) -> httpx.Response:
    """/metrics once no request is in flight any more (streams finish after their body)."""
    deadline = time.monotonic() + 10
    while True:
        scrape = httpx.get(f"{gateway.url}/metrics", headers=bearer(METRICS_CANARY), timeout=5)
        in_flight = parse(scrape.text).value("gateway_in_flight_requests")
        if in_flight == 0 or time.monotonic() > deadline:
            assert in_flight == 0
            return scrape
        time.sleep(0.05)


def output_secrets(battery: Battery) -> dict[str, str]:
    """Raw secrets and, for gateway-side keys, their SHA-256 digests (name -> needle)."""
    raw = {**PROVIDER_CANARIES, **GATEWAY_SIDE}
    raw |= {f"runtime key {i}": key for i, key in enumerate(battery.runtime_keys)}
    digests = {
        f"sha256({name})": hashlib.sha256(secret.encode()).hexdigest()
        for name, secret in raw.items()
        if name not in PROVIDER_CANARIES
    }
    return raw | digests


def hits(text: str, needles: dict[str, str], allowed: frozenset[str] = frozenset()) -> list[str]:
    return [name for name, needle in needles.items() if needle in text and needle not in allowed]


# --- the checks --------------------------------------------------------------------------


def test_the_battery_reached_every_path(artefacts: Artefacts, canary_fakes: Fakes) -> None:
    """The leak checks below mean something only if the canaries were really in play."""
    b = artefacts.battery
    for label in ("chat gpt", "stream claude", "embed gemini-embed", "models", "purge all"):
        assert b.status(label) == 200, label
    expected = {
        "openai 401 echo": 502,
        "openai 403 echo": 502,
        "openai 429 echo": 429,
        "openai 500 echo": 502,
        "openai 400 echo": 400,
        "openai timeout": 504,
        "gemini key invalid echo": 502,
        "azure 401 echo": 502,
        "wrong key": 401,
        "tight 2 (rpm)": 429,
        "create key": 201,
        "revoked key": 401,
        "admin with user key": 403,
    }
    assert {label: b.status(label) for label in expected} == expected
    cached = next(r.text for r in b.responses if r.label == "chat gpt again (cache)")
    assert "x-gateway-cache: HIT" in cached  # so Redis held cached answers when dumped
    stream_death = next(r.text for r in b.responses if r.label == "anthropic stream error echo")
    assert '"error"' in stream_death  # the in-band error really was relayed
    for fake in canary_fakes.all():
        assert fake.calls > 0 and not fake.violations, (fake.name, fake.violations)


def test_grep_finds_what_is_there(artefacts: Artefacts) -> None:
    """Positive control: the runtime key's one-time display and its digest in SQL."""
    b = artefacts.battery
    created = next(r for r in b.responses if r.label == "create key")
    assert hits(created.text, output_secrets(b)) == ["runtime key 0"]
    digest = hashlib.sha256(b.runtime_keys[1].encode()).hexdigest().encode()
    assert any(digest in value for value in artefacts.database)
    assert artefacts.redis  # something was dumped from Redis too (the cache, limits)
    assert "gateway_requests_total" in artefacts.metrics and '"access"' in artefacts.log


def test_no_secret_in_any_response(artefacts: Artefacts) -> None:
    needles = output_secrets(artefacts.battery)
    leaks = {
        r.label: found
        for r in artefacts.battery.responses
        if (found := hits(r.text, needles, r.allowed))
    }
    assert leaks == {}


def test_no_secret_in_the_log(artefacts: Artefacts) -> None:
    needles = output_secrets(artefacts.battery)
    leaks = [
        (line[:200], found) for line in artefacts.log.splitlines() if (found := hits(line, needles))
    ]
    assert leaks == []


def test_no_secret_in_metrics(artefacts: Artefacts) -> None:
    assert hits(artefacts.metrics, output_secrets(artefacts.battery)) == []


def test_no_raw_secret_in_redis_or_sql(artefacts: Artefacts) -> None:
    raw = {**PROVIDER_CANARIES, **GATEWAY_SIDE}
    raw |= {f"runtime key {i}": key for i, key in enumerate(artefacts.battery.runtime_keys)}
    stored = artefacts.redis + artefacts.database
    leaks = sorted({name for value in stored for name in hits(value.decode(errors="replace"), raw)})
    assert leaks == []
