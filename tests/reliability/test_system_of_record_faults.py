"""The system of record under faults and live traffic: Redis flushed, restarted and
evicting (rule 7), PostgreSQL stopped and started, or answering "starting up".

Three gateway replicas share this module's private redis-server (these tests flush it,
restart it and give it a small maxmemory) and one PostgreSQL database per test. Threads
keep non-streaming requests, streams and streams whose client hangs up mid-way flowing
through every fault, on every replica; each answer is recorded (its x-request-id, status,
and the usage it reported). Afterwards: access (revoked keys refused, a runtime key
served) never depended on Redis; a budget was never billed past what the README admits;
and the ledger in SQL adds up, exactly, to the usage the answers reported, with one
request-log row per answer, none lost and none doubled. The same holds when PostgreSQL
restarts under traffic, when it refuses connections for a while as a starting server
does (SQLSTATE 57P03, played by a TCP hop), and when admin reads flush the writer's
buffer while its background task writes too.

The upstream is a fake OpenAI whose usage is fixed (11 prompt tokens of which 3 cached,
10 completion tokens), so each answer's cost is exactly computable in decimals. The
ledger and the request log are read with psql, not through a gateway.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import cycle
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.governance import ADMIN_KEY, admin, bearer
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.pgserver import PostgresServer
from tests.promtext import scrape
from tests.reliability.helpers import TcpHop

# --- the upstream and its prices -------------------------------------------------------

PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS = 11, 3, 10
# Large-ish answers (about 12 KB, 8 stream chunks): the cache fills a small Redis fast.
REPLY = " ".join(letter * 1500 for letter in "abcdefgh")
SLOW_TAG = "[slow]"  # prompts the fake streams slowly: their clients hang up mid-way
SLOW_CHUNK_S = 0.05
CHAT, BUDGET_MODEL = "sor-chat", "sor-budget"
# USD per million tokens (input, cached input, output), written as in the config.
PRICES = {
    CHAT: ("2.5", "1.25", "10"),
    # Free input, 100000 per million output tokens: 10 tokens cost exactly 1.00 USD, and
    # a request with max_tokens=10 is estimated at exactly that at admission.
    BUDGET_MODEL: ("0", "0", "100000"),
}
MAX_TOKENS = 10

# --- the gateways ------------------------------------------------------------------------

REDIS_TIMEOUTS = {"socket_timeout_s": 0.25, "connect_timeout_s": 0.25, "operation_deadline_s": 0.3}
FLUSH_INTERVAL_S = 0.2  # database.flush_interval_s
KEY_SYNC_S = 0.2  # limits.key_sync_interval_s
# README ("Where each kind of state lives"): a budget counter Redis lost is rebuilt from
# the ledger copy each replica refreshes every 2 s (LEDGER_REFRESH_S); what a fault can
# forget is "at most the spend of the last ~2.5 s before Redis lost it", plus the
# reservations of the requests in flight at the fault.
README_STALE_S = 2.5
BUDGET_USD = 5  # 1.00 USD per request on BUDGET_MODEL: five requests
SETTLE_S = README_STALE_S + 0.5  # after the budget's last 200: every replica's copy has it
# (and at least a refresh and some slack after the ledger has it: a loaded machine's
# refresh may run late)
PACE_S = 0.02  # between one thread's requests
SLOW_PACE_S = 0.05  # threads of the keys that only check access or the budget
LEDGER_TIMEOUT_S = 20.0  # the writer retries every 5 s after a failed write
LEDGER_REFRESH_S = 2.0  # gateway.records.LEDGER_REFRESH_S: the budget floors' refresh


def key(name: str, **limits: Any) -> dict[str, Any]:
    return {
        "name": name,
        "key": f"gw-{name}-CANARY-{uuid.uuid5(uuid.NAMESPACE_DNS, name)}",
        **limits,
    }


REDIS_KEYS = {
    k["name"]: k
    for k in [
        key("sor-open"),  # no limits: served whatever Redis does
        key("sor-revoked"),  # a config key, revoked through the admin API before the faults
        key("sor-budget", budget_usd=BUDGET_USD, budget_period="total"),
    ]
}
PG_KEYS = {
    k["name"]: k
    for k in [
        key("pg-open"),
        key("pg-limited", rpm=12),  # reached early: 429s are expected, nothing else
        key("pg-budget", budget_usd=10_000, budget_period="total"),  # never reached
    ]
}


class SlowStreamsFake(FakeOpenAI):
    """Answers at once, except streams whose prompt carries SLOW_TAG: one chunk per
    SLOW_CHUNK_S, so the client can hang up while the gateway is still relaying."""

    def behaviour_for(self, body: Any) -> Behaviour:
        content = str(body["messages"][-1].get("content", ""))
        return (
            Behaviour(chunk_delay_s=SLOW_CHUNK_S) if content.startswith(SLOW_TAG) else Behaviour()
        )


@pytest.fixture(scope="module")
def upstream() -> Iterator[SlowStreamsFake]:
    fake = SlowStreamsFake(api_key=OPENAI_KEY)
    fake.reply = REPLY
    fake.prompt_tokens, fake.cached_tokens = PROMPT_TOKENS, CACHED_TOKENS
    fake.completion_tokens = COMPLETION_TOKENS
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def own_redis(session_dir: Path) -> Iterator[RedisServer]:
    """This module's Redis: flushing, restarting or starving it disturbs no other module."""
    server = RedisServer(session_dir).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _servers_back(own_redis: RedisServer, postgres_server: PostgresServer) -> Iterator[None]:
    """Whatever a test did, the next one (and the session's other modules: the PostgreSQL
    server is the session's) finds both servers running, Redis without a memory cap."""
    yield
    if own_redis.proc is None or own_redis.proc.poll() is not None:
        own_redis.start()
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("maxmemory", 0)
    postgres_server.start()  # a no-op when it runs
    assert postgres_server.running()


def replica_config(
    fake: FakeOpenAI, redis_url: str | None, database_url: str, keys: list[dict[str, Any]]
) -> dict[str, Any]:
    def model(name: str, deployment: str) -> dict[str, Any]:
        inp, cached, out = PRICES[name]
        return {
            "name": name,
            "id": deployment,
            "provider": "fake",
            "model": "gpt-4o-mini",
            "input_price_per_mtok_usd": float(inp),
            "cached_input_price_per_mtok_usd": float(cached),
            "output_price_per_mtok_usd": float(out),
        }

    config: dict[str, Any] = {
        "server": {"request_timeout_s": 10},
        "auth": {"mode": "keys", "keys": keys, "admin_keys": [ADMIN_KEY]},
        "limits": {"key_sync_interval_s": KEY_SYNC_S, "window_s": 60},
        "providers": {
            "fake": {
                "kind": "openai",
                "base_url": f"{fake.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": {"connect_s": 1.0, "read_s": 5.0},
            }
        },
        "models": [model(CHAT, "fake/chat"), model(BUDGET_MODEL, "fake/budget")],
        "cache": {"enabled": True},
        "database": {"url": database_url, "flush_interval_s": FLUSH_INTERVAL_S},
    }
    if redis_url is not None:
        config["redis"] = {"url": redis_url, **REDIS_TIMEOUTS}
    return config


def start_replicas(
    start_gateway: Callable[..., GatewayProcess], config: dict[str, Any], n: int = 3
) -> list[GatewayProcess]:
    """`n` replicas started at once (they migrate the new database once, under a lock)."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: start_gateway(config), range(n)))


# --- answers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    stream: str  # the traffic thread (or "setup")
    kind: str  # json | stream | hangup (a stream whose client leaves after some content)
    key: str  # the key's name
    model: str
    request_id: str  # sent as x-request-id: the request log's handle on it
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    code: str | None  # error code: a refusal's, or an in-band stream error's
    cache: str | None
    usage: dict[str, Any] | None  # the body's usage, or the stream's final usage chunk
    complete: bool  # a JSON body, or a stream that ended with [DONE]
    problem: str | None = None  # a client-side exception


def send(
    client: httpx.Client, stream: str, kind: str, key_name: str, secret: str, model: str
) -> Answer:
    request_id = f"sor-{uuid.uuid4().hex}"
    prompt = f"{SLOW_TAG if kind == 'hangup' else kind} {uuid.uuid4().hex}"  # never cached
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
    }
    if kind != "json":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-request-id": request_id, **bearer(secret)}
    started = time.monotonic()
    status, code, cache, usage, complete, problem = 0, None, None, None, False, None
    try:
        with client.stream("POST", "/chat/completions", json=body, headers=headers) as response:
            status, cache = response.status_code, response.headers.get("x-gateway-cache")
            if status != 200 or kind == "json":
                payload = json.loads(response.read())
                code = (payload.get("error") or {}).get("code") if status != 200 else None
                usage, complete = payload.get("usage") if status == 200 else None, True
            else:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        complete = True
                        break
                    event = json.loads(line[len("data: ") :])
                    if "error" in event:
                        code = event["error"].get("code") or "in-band error"
                        break
                    usage = event.get("usage") or usage
                    content = [c["delta"].get("content") for c in event.get("choices", [])]
                    if kind == "hangup" and any(content):
                        break  # hang up: leaving the block closes the connection
    except (httpx.HTTPError, ValueError) as exc:
        problem = repr(exc)
    return Answer(
        stream, kind, key_name, model, request_id, started, time.monotonic(), status, code,
        cache, usage, complete, problem,
    )  # fmt: skip


@dataclass
class Traffic:
    """Threads sending requests in a loop until stopped; every answer is recorded. The
    setup's requests are recorded too (stream "setup"): the request log must hold them."""

    secrets: dict[str, str]  # key name -> secret
    answers: dict[str, list[Answer]] = field(default_factory=lambda: {"setup": []})
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def add(
        self,
        stream: str,
        gateway: GatewayProcess,
        plan: list[tuple[str, str, str]],  # (kind, key name, model), cycled
        pace_s: float = PACE_S,
    ) -> None:
        self.answers[stream] = []
        thread = threading.Thread(
            target=self._loop, args=(stream, gateway, plan, pace_s), daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _loop(
        self, stream: str, gateway: GatewayProcess, plan: list[tuple[str, str, str]], pace_s: float
    ) -> None:
        with httpx.Client(base_url=gateway.base_url, timeout=15) as client:
            for kind, key_name, model in cycle(plan):
                if self._stop.is_set():
                    return
                answer = send(client, stream, kind, key_name, self.secrets[key_name], model)
                self.answers[stream].append(answer)
                self._stop.wait(pace_s)

    def once(self, gateway: GatewayProcess, key_name: str, model: str = CHAT) -> Answer:
        with httpx.Client(base_url=gateway.base_url, timeout=15) as client:
            answer = send(client, "setup", "json", key_name, self.secrets[key_name], model)
        self.answers["setup"].append(answer)
        return answer

    def streams(self, prefix: str = "") -> list[str]:
        return [s for s in self.answers if s != "setup" and s.startswith(prefix)]

    def since(self, stream: str, start: float) -> list[Answer]:
        return [a for a in self.answers[stream] if a.started >= start]

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < deadline, f"traffic: timed out waiting for {what}: {self}"
            time.sleep(0.02)

    def flowing(self, start: float, n: int = 3) -> None:
        """Every stream answered `n` requests that started at or after `start`."""
        self.wait_until(
            lambda: all(len(self.since(s, start)) >= n for s in self.streams()), "traffic"
        )

    def all(self) -> list[Answer]:
        return [a for answers in self.answers.values() for a in answers]

    def __str__(self) -> str:
        summary = {}
        for stream, answers in self.answers.items():
            counts: dict[tuple[str, int, str | None], int] = {}
            for a in answers:
                counts[a.kind, a.status, a.code] = counts.get((a.kind, a.status, a.code), 0) + 1
            summary[stream] = counts
        return repr(summary)[:3000]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)
        assert not any(t.is_alive() for t in self._threads), "a traffic thread hangs"

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def mixed(key_name: str) -> list[tuple[str, str, str]]:
    """Non-streaming requests, streams, and a stream whose client hangs up mid-way."""
    return [(kind, key_name, CHAT) for kind in ("json", "stream", "json", "hangup", "stream")]


# --- SQL -------------------------------------------------------------------------------


def sql(pg: PostgresServer, database: str, query: str) -> list[list[str]]:
    """Rows as lists of text (NULL: ''), read with psql: not through any gateway."""
    return [line.split("|") for line in pg.psql(query, database).splitlines() if line]


@dataclass(frozen=True)
class Totals:
    requests: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_usd: Decimal

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


NOTHING = Totals(0, 0, 0, 0, Decimal(0))


def cost(model: str, prompt: int, cached: int, completion: int) -> Decimal:
    """The README's formula, in decimals: uncached and cached input, output, per million."""
    inp, cached_price, out = (Decimal(p) for p in PRICES[model])
    return ((prompt - cached) * inp + cached * cached_price + completion * out) / 1_000_000


def of_usage(model: str, usage: dict[str, Any]) -> Totals:
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Totals(1, prompt, cached, completion, cost(model, prompt, cached, completion))


def ledger_totals(pg: PostgresServer, database: str, where: str = "true") -> Totals:
    ((n, inp, cached, out, usd),) = sql(
        pg,
        database,
        "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0), "
        "coalesce(sum(cached_tokens), 0), coalesce(sum(output_tokens), 0), "
        f"coalesce(sum(cost_usd), 0) FROM gateway_spend_daily WHERE {where}",
    )
    return Totals(int(n), int(inp), int(cached), int(out), Decimal(usd))


@dataclass(frozen=True)
class LogRow:
    status: int
    stream_outcome: str
    cache: str
    input_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None  # a float: the exact decimals are the ledger's


def request_log(pg: PostgresServer, database: str) -> dict[str, list[LogRow]]:
    """request_id -> its rows (one, unless a row was doubled)."""
    rows: dict[str, list[LogRow]] = {}
    query = (
        "SELECT request_id, status, coalesce(stream_outcome, ''), coalesce(cache, ''), "
        "input_tokens, cached_tokens, output_tokens, cost_usd FROM gateway_requests"
    )
    for rid, status, outcome, cache, inp, cached, out, usd in sql(pg, database, query):
        number = [int(x) if x else None for x in (inp, cached, out)]
        row = LogRow(int(status), outcome, cache, *number, float(usd) if usd else None)
        rows.setdefault(rid, []).append(row)
    return rows


def expected_totals(answers: list[Answer], log: dict[str, list[LogRow]]) -> Totals | None:
    """What the ledger must add up to: every 200 (a cache hit counts as a request, with
    no tokens and no cost; none is expected here: every prompt is new). Non-streamed
    answers and complete streams: the usage the client was shown (the body's, the final
    usage chunk's). Streams whose client hung up never saw their usage; the gateway bills
    what was sent and produced (an estimate, or the upstream's usage if it arrived before
    the hang-up was noticed), and the request-log row is the only record of it: its
    tokens are taken from there, and its cost is computed from them here, with the prices
    above. None: a hang-up's row is missing."""
    total = NOTHING
    for a in answers:
        if a.status != 200:
            continue
        if a.cache == "HIT":  # a request in the ledger, without tokens or cost
            total += Totals(1, 0, 0, 0, Decimal(0))
            continue
        if a.kind == "hangup":
            rows = log.get(a.request_id)
            if not rows or rows[0].input_tokens is None:
                return None
            row = rows[0]
            cached, output = row.cached_tokens or 0, row.output_tokens or 0
            usage = {
                "prompt_tokens": row.input_tokens,
                "completion_tokens": output,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            total += of_usage(a.model, usage)
        else:
            assert a.usage is not None, a  # the fake upstream always reports usage
            total += of_usage(a.model, a.usage)
    return total


def settled_records(
    pg: PostgresServer, database: str, answers: list[Answer]
) -> tuple[Totals, Totals, dict[str, list[LogRow]]]:
    """(ledger, expected, request log) once the writers have caught up: one log row per
    answer and the ledger equal to the answers' usage (or the last seen at the timeout)."""
    deadline = time.monotonic() + LEDGER_TIMEOUT_S
    while True:
        log = request_log(pg, database)
        expected = expected_totals(answers, log)
        ledger = ledger_totals(pg, database)
        rows = sum(map(len, log.values()))
        if (rows >= len(answers) and ledger == expected) or time.monotonic() > deadline:
            if expected is None:  # a hang-up without its row (or usage): say which
                assert_one_row_per_answer(answers, log)
                raise AssertionError("a hang-up's request-log row has no usage")
            return ledger, expected, log
        time.sleep(0.2)


def assert_one_row_per_answer(answers: list[Answer], log: dict[str, list[LogRow]]) -> None:
    sent = {a.request_id: a for a in answers}
    assert len(sent) == len(answers)
    doubled = {rid: rows for rid, rows in log.items() if len(rows) > 1}
    assert not doubled, f"request-log rows written twice: {list(doubled.items())[:5]}"
    missing = [a for a in answers if a.request_id not in log]
    assert not missing, f"{len(missing)} answers have no request-log row: {missing[:3]}"
    unknown = set(log) - set(sent)
    assert not unknown, f"request-log rows of requests nobody sent: {sorted(unknown)[:5]}"
    assert sum(map(len, log.values())) == len(answers)
    for a in answers:
        (row,) = log[a.request_id]
        assert row.status == a.status, (a, row)
        if a.status == 200 and a.kind != "hangup" and a.cache != "HIT":
            assert a.usage is not None
            usage = of_usage(a.model, a.usage)
            tokens = (row.input_tokens, row.cached_tokens or 0, row.output_tokens)
            assert tokens == (usage.input_tokens, usage.cached_tokens, usage.output_tokens), a
            assert row.cost_usd == pytest.approx(float(usage.cost_usd), rel=1e-9), (a, row)
        if a.kind == "hangup" and a.status == 200:
            assert row.stream_outcome == "client_disconnect", (a, row)
            billed = cost(
                a.model, row.input_tokens or 0, row.cached_tokens or 0, row.output_tokens or 0
            )
            assert row.cost_usd == pytest.approx(float(billed), rel=1e-9), (a, row)


def answered_200(answers: list[Answer]) -> int:
    return sum(a.status == 200 for a in answers)


def assert_served(answers: list[Answer]) -> None:
    """200s only, each one whole: a body with usage, a stream with its usage chunk and
    [DONE], or a stream the client itself left after some content."""
    for a in answers:
        assert (a.status, a.problem, a.code) == (200, None, None), a
        if a.kind == "hangup":
            assert not a.complete, a  # the client left before the end
        else:
            assert a.complete and a.usage is not None, a


def key_id(gateway: GatewayProcess, name: str) -> str:
    listed = admin(gateway, "GET", "/admin/keys").json()["data"]
    return str(next(k["id"] for k in listed if k["name"] == name))


def create_key(gateway: GatewayProcess, name: str) -> tuple[str, str]:
    """(id, secret) of a new runtime key."""
    created = admin(gateway, "POST", "/admin/keys", json={"name": name})
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["key"]


def revoke(gateway: GatewayProcess, ref: str) -> None:
    revoked = admin(gateway, "POST", f"/admin/keys/{ref}/revoke")
    assert revoked.status_code == 200, revoked.text


def until_everywhere(
    traffic: Traffic, replicas: list[GatewayProcess], key_name: str, status: int, why: str = ""
) -> None:
    """Until every replica answers the key with `status` (a key change takes up to
    key_sync_interval_s to reach the others)."""
    deadline = time.monotonic() + 5
    for gateway in replicas:
        while (got := traffic.once(gateway, key_name).status) != status:
            assert time.monotonic() < deadline, f"{key_name}: {got}, wanted {status}. {why}"
            time.sleep(0.05)


def until_in_ledger(pg: PostgresServer, database: str, key_name: str, usd: float) -> float:
    """When (monotonic) the ledger first showed `usd` spent by the key."""
    deadline = time.monotonic() + LEDGER_TIMEOUT_S
    while ledger_totals(pg, database, f"key_name = '{key_name}'").cost_usd < Decimal(usd):
        assert time.monotonic() < deadline, f"{key_name}: its spend never reached the ledger"
        time.sleep(0.1)
    return time.monotonic()


def evicted_keys(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("stats")["evicted_keys"])


def budget_margin(answers: list[Answer], faults: list[tuple[float, float]]) -> int:
    """The budget's 200s a fault may have let Redis forget (README): those in flight during
    a fault, or that ended within README_STALE_S before it (not in every replica's copy of
    the ledger yet). Each costs 1.00 USD: the margin in USD is this count."""
    return sum(
        any(a.started <= end and a.ended >= start - README_STALE_S for start, end in faults)
        for a in answers
        if a.status == 200
    )


# --- a PostgreSQL that is starting up --------------------------------------------------


class StartingUpPostgres(TcpHop):
    """A TCP hop to PostgreSQL that can play a server starting up (or shutting down).

    `up()`: bytes go through both ways. `starting()`: the connections going through are
    cut (as a restart cuts them), and every new one is answered as PostgreSQL answers a
    client while it starts or stops: SQLSTATE 57P03, "the database system is starting
    up", before any authentication. A real restart has that window too, at random; here
    it lasts as long as the test wants."""

    SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._starting = False
        self._links: set[asyncio.StreamWriter] = set()
        self.refused = 0  # connections answered with 57P03

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def starting(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set(True), self._loop).result(5)

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set(False), self._loop).result(5)

    async def _set(self, starting: bool) -> None:
        self._starting = starting
        if starting:
            for writer in self._links:
                writer.transport.abort()
            self._links.clear()

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        if self._starting:
            await self._refuse(client_r, client_w)
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._links |= {client_w, server_w}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()

        pumps = [
            asyncio.create_task(pump(client_r, server_w)),
            asyncio.create_task(pump(server_r, client_w)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for writer in (client_w, server_w):
                self._links.discard(writer)
                writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Decline SSL/GSS encryption ('N'), read the startup message, answer FATAL 57P03."""
        with suppress(OSError, asyncio.IncompleteReadError):
            while True:
                length = int.from_bytes(await reader.readexactly(4), "big")
                body = await reader.readexactly(length - 4)
                if length == 8 and int.from_bytes(body, "big") in (
                    self.SSL_REQUEST,
                    self.GSSENC_REQUEST,
                ):
                    writer.write(b"N")
                    await writer.drain()
                    continue
                break
            fields = [(b"S", "FATAL"), (b"V", "FATAL"), (b"C", "57P03")]
            fields.append((b"M", "the database system is starting up"))
            payload = b"".join(code + text.encode() + b"\0" for code, text in fields) + b"\0"
            writer.write(b"E" + (len(payload) + 4).to_bytes(4, "big") + payload)
            await writer.drain()
            self.refused += 1
        writer.close()


# --- tests -------------------------------------------------------------------------------


def test_redis_flushed_restarted_and_evicting_loses_no_access_and_no_money(
    start_gateway: Callable[..., GatewayProcess],
    upstream: SlowStreamsFake,
    own_redis: RedisServer,
    postgres_server: PostgresServer,
) -> None:
    """FLUSHALL, a restart (empty) and allkeys-lru evictions under traffic: access, the
    budget and the books are the system of record's, not the cache's."""
    database = "sor_faults_redis"
    url = postgres_server.create_database(database)
    config = replica_config(upstream, own_redis.url, url, list(REDIS_KEYS.values()))
    replicas = start_replicas(start_gateway, config)
    traffic = Traffic({name: str(k["key"]) for name, k in REDIS_KEYS.items()})

    # Before the faults: a runtime key made, another made and revoked, a config key revoked.
    _, traffic.secrets["sor-runtime"] = create_key(replicas[0], "sor-runtime")
    gone, traffic.secrets["sor-runtime-revoked"] = create_key(replicas[1], "sor-runtime-revoked")
    until_everywhere(traffic, replicas, "sor-runtime-revoked", 200)
    revoke(replicas[2], gone)
    revoke(replicas[0], key_id(replicas[0], "sor-revoked"))
    until_everywhere(traffic, replicas, "sor-runtime", 200)
    until_everywhere(traffic, replicas, "sor-runtime-revoked", 401)
    until_everywhere(traffic, replicas, "sor-revoked", 401)
    setup_done = time.monotonic()

    faults: list[tuple[float, float]] = []  # (start, end) of each fault
    with traffic:
        for i, gateway in enumerate(replicas):
            traffic.add(f"open{i}", gateway, mixed("sor-open"))
            traffic.add(f"runtime{i}", gateway, mixed("sor-runtime"))
            budget = [("json", "sor-budget", BUDGET_MODEL)]
            traffic.add(f"budget{i}", gateway, budget, SLOW_PACE_S)
            revoked = [("json", "sor-revoked", CHAT), ("stream", "sor-runtime-revoked", CHAT)]
            traffic.add(f"revoked{i}", gateway, revoked, SLOW_PACE_S)
        budgets = traffic.streams("budget")

        # The budget is spent (five 200s across the replicas, then refusals everywhere),
        # and every replica's copy of the ledger has it before Redis loses anything.
        def refused_everywhere() -> bool:
            return all(any(a.status == 429 for a in traffic.answers[s]) for s in budgets)

        def spent() -> list[Answer]:
            return [a for s in budgets for a in traffic.answers[s] if a.status == 200]

        traffic.wait_until(lambda: len(spent()) >= BUDGET_USD, "the budget spent")
        traffic.wait_until(refused_everywhere, "the budget refused everywhere")
        spent_at = max(a.ended for a in spent())
        in_ledger_at = until_in_ledger(postgres_server, database, "sor-budget", BUDGET_USD)
        copied_at = max(spent_at + SETTLE_S, in_ledger_at + LEDGER_REFRESH_S + 1.5)
        traffic.wait_until(lambda: time.monotonic() > copied_at, "every replica's ledger copy")
        traffic.flowing(setup_done)

        flushed_at = time.monotonic()
        with redis.Redis.from_url(own_redis.url) as client:
            client.flushall()
        faults.append((flushed_at, time.monotonic()))
        traffic.flowing(flushed_at)

        stopped_at = time.monotonic()
        own_redis.stop()
        time.sleep(0.5)  # long enough for every thread to meet the outage
        own_redis.start()  # no persistence: it comes back empty
        restarted_at = time.monotonic()
        faults.append((stopped_at, restarted_at))
        traffic.flowing(restarted_at)
        traffic.wait_until(
            lambda: all(
                any(a.status == 429 for a in traffic.since(s, restarted_at)) for s in budgets
            ),
            "the budget refused again on every replica",
        )

        evicting_at = time.monotonic()
        try:
            with redis.Redis.from_url(own_redis.url) as client:
                client.config_set("maxmemory-policy", "allkeys-lru")
                client.config_set("maxmemory", "4mb")
            traffic.wait_until(lambda: evicted_keys(own_redis.url) >= 300, "evictions")
            traffic.flowing(time.monotonic())
        finally:
            with redis.Redis.from_url(own_redis.url) as client:
                client.config_set("maxmemory", 0)
        faults.append((evicting_at, time.monotonic()))

    # Access never depended on Redis: refused on every replica, every try; served likewise.
    for stream in traffic.streams("revoked"):
        assert traffic.answers[stream], stream
        for a in traffic.answers[stream]:
            assert (a.status, a.code) == (401, "invalid_api_key"), a
    for stream in traffic.streams("runtime") + traffic.streams("open"):
        assert_served(traffic.answers[stream])
    # The cache was busy: every answer went upstream (new prompts), none failed for it.
    assert {a.cache for s in traffic.streams("open") for a in traffic.answers[s]} == {"MISS"}

    # The budget: refused (never an error) except while Redis was away, where budgets fail
    # closed; billed at most its budget plus the README's margin, which is 0 here since the
    # budget was spent SETTLE_S before the first fault.
    budget_answers = [a for s in budgets for a in traffic.answers[s]]
    for a in budget_answers:
        assert (a.status, a.code) in {
            (200, None),
            (429, "insufficient_quota"),
            (503, "limits_unavailable"),
        }, a
        if a.status == 503:  # Redis was away: not before the restart, nor for evictions
            assert stopped_at <= a.ended and a.started < evicting_at, a
    served = sum(a.status == 200 for a in budget_answers)
    margin = budget_margin(budget_answers, faults)
    # For a failure: when the 200s past the budget came, in seconds from the first fault.
    late = sorted(
        (round(a.started - flushed_at, 3), round(a.ended - flushed_at, 3), a.stream)
        for a in budget_answers
        if a.status == 200 and a.started > spent_at
    )
    timeline = {
        "faults (start, end)": [
            (round(x - flushed_at, 3), round(y - flushed_at, 3)) for x, y in faults
        ],
        "200s after the budget was spent (started, ended, stream)": late,
    }
    assert BUDGET_USD <= served <= BUDGET_USD + margin, (served, margin, timeline)
    assert margin == 0, ("the budget was spent before the faults", served, timeline)

    # The system of record: one request-log row per answer, and the ledger equal, to the
    # token and to the decimal, to what the answers reported.
    answers = traffic.all()
    assert not [a for a in answers if a.status == 0], "requests without an answer"
    ledger, expected, log = settled_records(postgres_server, database, answers)
    assert_one_row_per_answer(answers, log)
    assert ledger == expected, (ledger, expected)
    assert ledger.requests == answered_200(answers)
    hangups = [a for a in answers if a.kind == "hangup"]
    assert len(hangups) >= 6 and all(a.status == 200 for a in hangups)
    assert upstream.abandoned >= 1  # hang-ups cut their upstream streams short
    billed = ledger_totals(postgres_server, database, "key_name = 'sor-budget'")
    assert (billed.requests, billed.cost_usd) == (served, Decimal(served))
    sys.stderr.write(  # with -s
        f"redis faults: {len(answers)} answers, {len(hangups)} hang-ups, ledger {ledger}, "
        f"{evicted_keys(own_redis.url)} keys evicted since the restart\n"
    )


def test_postgres_stopped_and_started_under_traffic_loses_and_doubles_nothing(
    start_gateway: Callable[..., GatewayProcess],
    upstream: SlowStreamsFake,
    own_redis: RedisServer,
    postgres_server: PostgresServer,
) -> None:
    """PostgreSQL stopped for 3 s under traffic, then started: requests are served as
    before, the rows wait and drain, once each."""
    database = "sor_faults_pg"
    url = postgres_server.create_database(database)
    config = replica_config(upstream, own_redis.url, url, list(PG_KEYS.values()))
    replicas = start_replicas(start_gateway, config)
    traffic = Traffic({name: str(k["key"]) for name, k in PG_KEYS.items()})
    _, traffic.secrets["pg-runtime"] = create_key(replicas[0], "pg-runtime")
    until_everywhere(traffic, replicas, "pg-runtime", 200)
    marks = [len(g.log_text()) for g in replicas]

    with traffic:
        for i, gateway in enumerate(replicas):
            traffic.add(f"open{i}", gateway, mixed("pg-open"))
            traffic.add(f"budget{i}", gateway, mixed("pg-budget"))
            traffic.add(f"runtime{i}", gateway, [("json", "pg-runtime", CHAT)], SLOW_PACE_S)
            traffic.add(f"limited{i}", gateway, [("json", "pg-limited", CHAT)], SLOW_PACE_S)
        traffic.flowing(0)
        stopped_at = time.monotonic()
        try:
            postgres_server.stop()
            traffic.wait_until(lambda: time.monotonic() > stopped_at + 3, "the outage")
            traffic.flowing(stopped_at + 0.5)  # requests answered while SQL was away
        finally:
            postgres_server.start()
        restarted_at = time.monotonic()
        traffic.flowing(restarted_at)

    # No request failed for it: 200s, and the rate-limited key's 429s.
    for stream in traffic.streams("limited"):
        for a in traffic.answers[stream]:
            assert (a.status, a.code) in {(200, None), (429, "rate_limit_exceeded")}, a
    assert any(a.status == 429 for s in traffic.streams("limited") for a in traffic.answers[s])
    for prefix in ("open", "budget", "runtime"):
        for stream in traffic.streams(prefix):
            assert_served(traffic.answers[stream])
            outage = [a for a in traffic.answers[stream] if stopped_at < a.started < restarted_at]
            assert outage, f"{stream}: no request while SQL was away"

    # The writers caught up: every answer has its one row, the ledger its usage, once.
    answers = traffic.all()
    ledger, expected, log = settled_records(postgres_server, database, answers)
    assert_one_row_per_answer(answers, log)
    assert ledger == expected, (ledger, expected)
    assert ledger.requests == answered_200(answers)

    for gateway, mark in zip(replicas, marks, strict=True):
        log_text = gateway.log_text()[mark:]
        # One warning when SQL went away, one when it was back; nothing dropped or waiting.
        assert log_text.count("request records wait in memory") == 1, gateway.log_path
        assert log_text.count("sql available again; request records written") == 1
        metrics = scrape(gateway.url)
        assert metrics.value("gateway_records_pending") == 0
        assert metrics.value("gateway_records_dropped_total") == 0


def test_a_database_starting_up_stops_no_background_work(
    start_gateway: Callable[..., GatewayProcess],
    upstream: SlowStreamsFake,
    postgres_server: PostgresServer,
) -> None:
    """A restarting PostgreSQL answers connections with 57P03 ("starting up", "shutting
    down") for a moment; a gateway that meets that must go on as for any outage: the
    request records wait and are written, and keys sync again. Replica A reaches SQL
    through the hop, B directly; B revokes a key once SQL is back: A must follow."""
    database = "sor_faults_startup"
    url = postgres_server.create_database(database)
    hop = StartingUpPostgres(postgres_server.port).start()
    try:
        keys = list(PG_KEYS.values())
        a = start_gateway(replica_config(upstream, None, hop.url(database), keys))
        b = start_gateway(replica_config(upstream, None, url, keys))
        traffic = Traffic({name: str(k["key"]) for name, k in PG_KEYS.items()})
        ref, traffic.secrets["startup-runtime"] = create_key(b, "startup-runtime")
        until_everywhere(traffic, [a, b], "startup-runtime", 200)
        mark = len(a.log_text())

        hop.starting()
        starting_at = time.monotonic()
        while time.monotonic() < starting_at + LEDGER_REFRESH_S + 0.5:  # every task meets it
            assert traffic.once(a, "pg-open").status == 200  # served meanwhile
            time.sleep(0.1)
        hop.up()
        assert hop.refused > 0

        revoke(b, ref)  # A learns it from SQL, through its key sync
        why = "A still serves a key B revoked: its key sync stopped"
        until_everywhere(traffic, [a], "startup-runtime", 401, why)
        answers = traffic.all()
        ledger, expected, log = settled_records(postgres_server, database, answers)
        assert_one_row_per_answer(answers, log)
        assert ledger == expected, (ledger, expected)
        log_text = a.log_text()[mark:]
        assert log_text.count("request records wait in memory") == 1, a.log_path
        assert log_text.count("sql available again; request records written") == 1
    finally:
        hop.stop()


def test_pooled_connections_the_server_ended_are_not_an_outage(
    start_gateway: Callable[..., GatewayProcess],
    upstream: SlowStreamsFake,
    postgres_server: PostgresServer,
) -> None:
    """The server ends every connection of the gateway's pool while they sit idle (what
    a restart or a failover leaves behind) and stays up: the next writes reconnect and
    write, with no outage logged and nothing lost or doubled."""
    database = "sor_faults_ended"
    url = postgres_server.create_database(database)
    gateway = start_gateway(replica_config(upstream, None, url, list(PG_KEYS.values())))
    traffic = Traffic({name: str(k["key"]) for name, k in PG_KEYS.items()})
    for _ in range(3):
        assert traffic.once(gateway, "pg-open").status == 200
    settled_records(postgres_server, database, traffic.all())  # the pool holds connections
    mark = len(gateway.log_text())
    ended = postgres_server.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    assert int(ended.strip()) >= 1, ended
    for _ in range(5):
        assert traffic.once(gateway, "pg-open").status == 200
        time.sleep(FLUSH_INTERVAL_S)
    answers = traffic.all()
    ledger, expected, log = settled_records(postgres_server, database, answers)
    assert_one_row_per_answer(answers, log)
    assert ledger == expected, (ledger, expected)
    assert "request records wait in memory" not in gateway.log_text()[mark:], gateway.log_path


def test_admin_reads_during_traffic_lose_no_records(
    start_gateway: Callable[..., GatewayProcess],
    upstream: SlowStreamsFake,
    postgres_server: PostgresServer,
) -> None:
    """`GET /admin/usage` and `/admin/requests` write what is buffered before they read
    (`Database.written`), while the background writer writes too. Neither may lose,
    double or fail a batch: every answer still has its row, and the ledger its usage."""
    database = "sor_faults_reads"
    url = postgres_server.create_database(database)
    gateway = start_gateway(replica_config(upstream, None, url, list(PG_KEYS.values())))
    mark = len(gateway.log_text())
    traffic = Traffic({name: str(k["key"]) for name, k in PG_KEYS.items()})
    stop, reads = threading.Event(), []

    def read_admin() -> None:
        with httpx.Client(base_url=gateway.url, headers=bearer(ADMIN_KEY), timeout=10) as client:
            while not stop.is_set():
                for path in ("/admin/usage", "/admin/requests?limit=1"):
                    reads.append(client.get(path).status_code)

    readers = [threading.Thread(target=read_admin, daemon=True) for _ in range(2)]
    with traffic:
        for i in range(4):
            traffic.add(f"open{i}", gateway, [("json", "pg-open", CHAT)], 0)
        for reader in readers:
            reader.start()
        traffic.flowing(time.monotonic() + 3)  # three seconds of it
        stop.set()
        for reader in readers:
            reader.join(10)
    # Reads overlapped the writer (each one flushes for up to 2 s, under traffic).
    assert len(reads) >= 4 and set(reads) == {200}, reads

    answers = traffic.all()
    assert_served(answers)
    ledger, expected, log = settled_records(postgres_server, database, answers)
    assert_one_row_per_answer(answers, log)
    assert ledger == expected, (ledger, expected)
    assert "sql unavailable" not in gateway.log_text()[mark:]
    # Each row counted once as written, however many flushes raced for its batch.
    assert scrape(gateway.url).value("gateway_records_written_total") == len(answers)
