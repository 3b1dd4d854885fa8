"""Three replicas behind a real HAProxy through a rolling restart (issue 28).

Three gateway replicas share one Redis and one PostgreSQL database behind HAProxy
(round robin, `GET /readyz` checked every 100 ms). Threads keep non-streaming requests
and 3 s streams flowing through it (httpx, no client retries) while each replica in
turn is taken out, gets SIGTERM while one of its streams has seconds to go, drains,
exits, starts again on its port and is seen up; during the second turn a burst on an
rpm-limited key goes to the others. Then: nothing failed, the limit admitted exactly
its rpm, and the ledger equals what the upstream served, to the token and the decimal.

Taken out how: `haproxy-drain` first sets the server to DRAIN through HAProxy's runtime
API (the operator's step, as `preStop` is for a Kubernetes Pod), then SIGTERM once what
HAProxy had sent there is answered. `sigterm-only` sends SIGTERM alone, to replicas
with `server.shutdown_delay_s`: `/readyz` answers 503 at once while the replica goes on
accepting and serving, so HAProxy takes it out through its checks (L7STS 503) before the
listener closes. (Without the delay, uvicorn closes the listener and every connection
without a request in progress within 0.1 s: a request HAProxy had already written on
such a connection was lost, a 502 or a connection closed without an answer.)
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour, free_port
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.pgserver import PostgresServer

MODEL = "rolling-chat"
WORDS, STREAM_CHUNK_S = 30, 0.1  # a stream lasts WORDS * STREAM_CHUNK_S = 3 s
YOUNG_S = 2.0  # SIGTERM while a stream of the replica has at least this long to go
JSON_DELAY_S = 0.05  # a non-streaming answer's upstream time
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7  # the fake's usage of every call
INPUT_PRICE, OUTPUT_PRICE = "2.5", "10"  # USD per million tokens, as in the config
RPM, BURST = 8, 24  # the limited key's rpm; requests sent on it at once
STREAM_THREADS = 6
JSON_LOAD = (4, 0.1)  # threads, and the pause between one's requests: some 25 a second
DRAIN_TIMEOUT_S = 20.0  # longer than any stream: a drain never cuts one
# Generous Redis deadlines: a loaded machine's slow Redis is no outage here.
REDIS_TIMEOUTS = {"socket_timeout_s": 5, "connect_timeout_s": 2, "operation_deadline_s": 5}
NAMES = ("gw0", "gw1", "gw2")  # HAProxy's server names, in replica order
# uvicorn re-raises the SIGTERM it caught once it has drained and shut down.
EXIT_SIGTERM = -signal.SIGTERM
HAPROXY_CFG = """\
global
    maxconn 1000
    log stdout format raw local0
    stats socket {socket} level admin
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # a check's whole exchange (default: inter, 100 ms: too short on a loaded machine)
    timeout check 2s
    # refused connects (a listener closed) retried on another replica each time; the
    # default retry-on conn-failure never replays a request once sent
    retries 3
    option redispatch 1
frontend gateways
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2
    http-response set-header x-served-by %[srv_name]
"""


class PacedFake(FakeOpenAI):
    """Streams one word per STREAM_CHUNK_S; non-streaming answers after JSON_DELAY_S."""

    def behaviour_for(self, body: Any) -> Behaviour:
        if body.get("stream"):
            return Behaviour(chunk_delay_s=STREAM_CHUNK_S)
        return Behaviour(delay_s=JSON_DELAY_S)


@pytest.fixture(scope="module")
def upstream() -> Iterator[PacedFake]:
    fake = PacedFake(api_key=OPENAI_KEY)
    fake.reply = " ".join(f"w{i}" for i in range(WORDS))
    fake.prompt_tokens, fake.completion_tokens = PROMPT_TOKENS, COMPLETION_TOKENS
    fake.start()
    yield fake
    fake.stop()


def new_keys() -> dict[str, str]:
    """This test's secrets: new ones, as Redis (and its rpm windows) outlives the test."""
    return {name: f"gw-rolling-{name}-CANARY-{uuid.uuid4().hex}" for name in ("open", "limited")}


def replica_config(
    fake: FakeOpenAI, keys: dict[str, str], redis_url: str, database_url: str
) -> dict[str, Any]:
    model = {"name": MODEL, "provider": "fake", "model": "gpt-4o-mini"}
    prices = {"input_price_per_mtok_usd": INPUT_PRICE, "output_price_per_mtok_usd": OUTPUT_PRICE}
    return {
        "server": {"drain_timeout_s": DRAIN_TIMEOUT_S, "request_timeout_s": 30},
        "auth": {
            "mode": "keys",
            "keys": [
                {"name": "rolling-open", "key": keys["open"]},
                {"name": "rolling-limited", "key": keys["limited"], "rpm": RPM},
            ],
        },
        # Limits fail closed (a visible 503) if Redis fails after all, not open: "rpm N
        # admits exactly N" is never a matter of luck.
        "limits": {"window_s": 60, "on_redis_error": {"rate_limits": "closed"}},
        "providers": {
            "fake": {"kind": "openai", "base_url": f"{fake.base_url}/v1", "api_key": OPENAI_KEY}
        },
        "models": [model | {k: float(v) for k, v in prices.items()}],
        "redis": {"url": redis_url, **REDIS_TIMEOUTS},
        "database": {"url": database_url, "flush_interval_s": 0.2},
    }


# --- HAProxy -----------------------------------------------------------------------------


class HAProxy:
    """`haproxy -db` on a free port in front of the replicas, its runtime API on a Unix
    socket."""

    def __init__(self, workdir: Path, ports: list[int]) -> None:
        self.port = free_port()
        self.config_path, self.log_path = workdir / "haproxy.cfg", workdir / "haproxy.log"
        self.socket_path = workdir / "haproxy.sock"
        config = HAPROXY_CFG.format(socket=self.socket_path, port=self.port)
        for name, port in zip(NAMES, ports, strict=True):
            config += f"    server {name} 127.0.0.1:{port} check\n"
        self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with self.log_path.open("ab") as log:
            cmd = [haproxy, "-f", str(self.config_path), "-db"]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        for name in NAMES:
            self.wait_for(name, "UP")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def command(self, line: str) -> str:
        """One command of the runtime API; its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket_path))
            sock.sendall(f"{line}\n".encode())
            return b"".join(iter(lambda: sock.recv(65536), b"")).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """The backend's `show stat` rows by server name (BACKEND: its totals)."""
        rows = csv.DictReader(self.command("show stat").removeprefix("# ").splitlines())
        return {r["svname"]: r for r in rows if r["pxname"] == "replicas"}

    def set_state(self, name: str, state: str) -> None:
        answer = self.command(f"set server replicas/{name} state {state}")
        assert not answer.strip(), f"HAProxy: set {name} {state}: {answer}"

    def wait_for(self, name: str, status: str, timeout_s: float = 20) -> dict[str, str]:
        """The server's stats row once HAProxy shows it with `status`."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                row = self.stats()[name]
                if row["status"] == status:
                    return row
            except (OSError, KeyError):  # not listening yet
                pass
            assert time.monotonic() < deadline, f"HAProxy: {name} never {status}: {self.log_path}"
            time.sleep(0.02)


# --- traffic -------------------------------------------------------------------------------


@dataclass
class Answer:
    kind: str  # json | stream | burst
    started: float
    ended: float = 0.0  # 0: in flight
    status: int = 0  # 0: no HTTP answer (yet)
    served_by: str = ""  # HAProxy's server name (x-served-by)
    code: str | None = None  # a refusal's error code
    complete: bool = False  # a body with choices, or a stream ended by [DONE]
    problem: str | None = None  # an exception, or a stream's in-band error


def read_stream(response: httpx.Response, answer: Answer) -> None:
    for line in response.iter_lines():
        if line == "data: [DONE]":
            answer.complete = True
        elif line.startswith("data: ") and "error" in json.loads(line[6:]):
            answer.problem = f"in-band error: {line}"


def send(client: httpx.Client, kind: str, key: str, answers: list[Answer]) -> None:
    """One request; its Answer is listed at once and filled in as the answer arrives."""
    prompt = [{"role": "user", "content": f"{kind} {uuid.uuid4().hex}"}]
    body = {"model": MODEL, "messages": prompt, "stream": kind == "stream"}
    answer = Answer(kind, time.monotonic())
    answers.append(answer)
    headers = {"authorization": f"Bearer {key}"}
    try:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            answer.status, answer.served_by = r.status_code, r.headers.get("x-served-by", "")
            if kind == "stream" and r.status_code == 200:
                read_stream(r, answer)
            else:
                payload = json.loads(r.read())
                answer.complete = "choices" in payload
                answer.code = (payload.get("error") or {}).get("code")
    except (httpx.HTTPError, ValueError) as exc:
        answer.problem = repr(exc)
    answer.ended = time.monotonic()


class Traffic:
    """Threads sending one kind of request in a loop through `url` until stopped."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.answers: list[Answer] = []
        self.bursts: list[list[Answer]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, kind: str, pace_s: float) -> None:
        thread = threading.Thread(target=self._loop, args=(kind, pace_s), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self, kind: str, pace_s: float) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                send(client, kind, self.key, self.answers)
                self._stop.wait(pace_s)

    def burst(self, n: int, key: str) -> None:
        """`n` requests at once, each on a connection of its own."""
        answers: list[Answer] = []

        def one(_: int) -> None:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                send(client, "burst", key, answers)

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(n)))
        self.answers += answers
        self.bursts.append(answers)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def young_stream_on(self, name: str) -> bool:
        """A stream on `name` has its head and at least YOUNG_S still to go."""
        young = time.monotonic() - (WORDS * STREAM_CHUNK_S - YOUNG_S)
        return any(
            a.kind == "stream" and a.served_by == name and not a.ended and a.started > young
            for a in list(self.answers)
        )

    def heads_in(self, before: float) -> bool:
        """Every request sent before `before` has the head of its answer (or failed)."""
        return all(a.status or a.ended for a in list(self.answers) if a.started < before)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self._threads), "a traffic thread hangs"


# --- the ledger --------------------------------------------------------------------------------


def ledger(pg: PostgresServer, database: str) -> tuple[int, int, int, Decimal]:
    """The spend ledger's requests, input and output tokens, and cost, read with psql."""
    sums = ", ".join(
        f"coalesce(sum({c}), 0)" for c in ("requests", "input_tokens", "output_tokens", "cost_usd")
    )
    n, inp, out, usd = pg.psql(f"SELECT {sums} FROM gateway_spend_daily", database).split("|")
    return int(n), int(inp), int(out), Decimal(usd.strip())


def logged_statuses(pg: PostgresServer, database: str) -> Counter[int]:
    """The request log's rows, counted by status."""
    rows = pg.psql("SELECT status, count(*) FROM gateway_requests GROUP BY status", database)
    return Counter({int(s): int(n) for s, n in (r.split("|") for r in rows.split())})


# --- the test ------------------------------------------------------------------------------------


def restart(
    gateway: GatewayProcess,
    name: str,
    haproxy: HAProxy,
    traffic: Traffic,
    take_out: str,
    meanwhile: Callable[[], None],
) -> dict[str, Any]:
    """One replica's turn: its times (monotonic) and HAProxy's row once it was out."""
    traffic.wait_until(lambda: traffic.young_stream_on(name), f"a stream on {name}")
    turn: dict[str, Any] = {}
    if take_out == "haproxy-drain":
        haproxy.set_state(name, "drain")
        drained_at = time.monotonic()
        turn["out"] = haproxy.wait_for(name, "DRAIN")
        traffic.wait_until(lambda: traffic.heads_in(drained_at), "what HAProxy sent there")
    turn["sigterm"] = time.monotonic()
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    meanwhile()
    if take_out == "sigterm-only":
        turn["out"] = haproxy.wait_for(name, "DOWN")
    assert gateway.proc.wait(DRAIN_TIMEOUT_S + 10) == EXIT_SIGTERM, gateway.log_path
    turn["exited"] = time.monotonic()
    gateway.start()  # on the same port
    if take_out == "haproxy-drain":
        haproxy.set_state(name, "ready")
    haproxy.wait_for(name, "UP")
    turn["up"] = time.monotonic()
    return turn


# Longer than HAProxy's checks take to see a 503 twice (fall 2 x inter 100 ms), with room
# for a loaded machine (1.5 s was not always enough in CI while a burst ran).
SHUTDOWN_DELAY_S = 3.0


@pytest.mark.parametrize("take_out", ["haproxy-drain", "sigterm-only"])
def test_a_rolling_restart_behind_haproxy_fails_nothing_and_loses_nothing(
    upstream: PacedFake,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
    take_out: str,
) -> None:
    database = f"rolling_restart_{take_out.replace('-', '_')}"
    keys = new_keys()
    url = postgres_server.create_database(database)
    config = replica_config(upstream, keys, redis_server.url, url)
    if take_out == "sigterm-only":
        config["server"]["shutdown_delay_s"] = SHUTDOWN_DELAY_S
    replicas = [GatewayProcess(config, tmp_path) for _ in NAMES]
    haproxy = HAProxy(tmp_path, [g.port for g in replicas])
    traffic = Traffic(f"http://127.0.0.1:{haproxy.port}", keys["open"])
    upstream.reset()
    turns: dict[str, dict[str, Any]] = {}
    redispatched = "?"
    try:
        for gateway in replicas:  # one by one: the first migrates the database
            gateway.start()
        haproxy.start()
        for kind, threads, pace_s in [("stream", STREAM_THREADS, 0.0), ("json", *JSON_LOAD)]:
            for _ in range(threads):
                traffic.add(kind, pace_s)
        for name, gateway in zip(NAMES, replicas, strict=True):
            # During the second turn, the limit, across the replicas HAProxy sends it to.
            send_burst = lambda: traffic.burst(BURST, keys["limited"])  # noqa: E731
            meanwhile = send_burst if name == NAMES[1] else lambda: None
            turns[name] = restart(gateway, name, haproxy, traffic, take_out, meanwhile)
        back = time.monotonic()
        traffic.wait_until(
            lambda: (
                {a.served_by for a in traffic.answers if a.started > back and a.ended} >= set(NAMES)
            ),
            "traffic on every replica after the restarts",
        )
    finally:
        traffic.stop()
        with suppress(OSError):
            redispatched = haproxy.stats()["BACKEND"]["wredis"]
        haproxy.stop()
        for gateway in replicas:  # SIGTERM: each drains, writes its records and exits
            gateway.stop()

    answers = traffic.answers
    failed = [
        a
        for a in answers
        if a.problem or ((a.status, a.complete) != (200, True) and a.kind != "burst")
    ]
    timeline = {
        n: [round(t[k] - t["sigterm"], 2) for k in ("exited", "up")] for n, t in turns.items()
    }
    sys.stderr.write(  # with -s
        f"rolling restart, {take_out}: {Counter((a.kind, a.status) for a in answers)}, "
        f"failed: {[(a.kind, a.status, a.problem, a.served_by) for a in failed]}, HAProxy "
        f"redispatched {redispatched}, last checks when out: "
        f"{ {n: t['out']['check_status'] for n, t in turns.items()} }, exited and up "
        f"(s after SIGTERM): {timeline}\n"
    )
    exits = [g.proc.returncode for g in replicas if g.proc is not None]
    assert exits == [EXIT_SIGTERM] * len(replicas), "a replica's graceful stop failed"

    # 1. Nothing failed: every answer whole, every refusal the limit's.
    assert not failed, f"{len(failed)} of {len(answers)} failed: {failed[:5]}; {haproxy.log_path}"
    for name, turn in turns.items():
        # A stream with seconds to go at the SIGTERM went on through the drain (and ended
        # whole, above); once back, the replica served again.
        assert any(
            a.kind == "stream"
            and a.served_by == name
            and a.started < turn["sigterm"]
            and a.ended > turn["sigterm"] + 1
            for a in answers
        ), f"no stream spanned {name}'s drain"
        assert any(a.served_by == name and a.started > turn["up"] for a in answers), name
        if take_out == "sigterm-only":  # out through a 503 of /readyz, not refused checks
            row = turn["out"]
            # ("* L7STS" while HAProxy runs the next check: the star marks one in progress.)
            status = row["check_status"].removeprefix("* ")
            assert (status, row["check_code"]) == ("L7STS", "503"), (name, row)

    # 2. The limit: exactly its rpm admitted across the replicas, the rest refused by it.
    (burst,) = traffic.bursts
    outcomes = Counter((a.status, a.code, a.complete) for a in burst)
    assert outcomes == {(200, None, True): RPM, (429, "rate_limit_exceeded", False): BURST - RPM}
    assert len({a.served_by for a in burst}) >= 2, "the burst reached one replica only"

    # 3. The ledger, written by replicas that drained and stopped: what the upstream served.
    calls = sum(r.path == "/v1/chat/completions" for r in upstream.received)
    assert calls == sum(a.status == 200 for a in answers)  # none sent upstream twice
    cost = PROMPT_TOKENS * Decimal(INPUT_PRICE) + COMPLETION_TOKENS * Decimal(OUTPUT_PRICE)
    served = (calls, calls * PROMPT_TOKENS, calls * COMPLETION_TOKENS, calls * cost / 10**6)
    assert ledger(postgres_server, database) == served
    assert logged_statuses(postgres_server, database) == Counter(a.status for a in answers)
