"""A hung provider must not lose a burst while a backup is healthy (rules 1 and 18).

Route [primary, backup] where the primary accepts connections and never answers. The
first move to the backup is free (the retry budget bounds repeated attempts, not it), so
a burst of 60 is served in full while the primary hangs; once the primary is cooled
down and its cooldown ends, it is half-open: one request probes it, the others go to the
backup at once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.gatewayproc import GatewayProcess

BURST = 60
READ_S = 1.0  # the primary's read timeout: how long each request waits on it
COOLDOWN_S = 3.0


class HungUpstream:
    """Accepts connections, reads what comes, never answers; counts connections."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._held.append(conn)  # never read from, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture(scope="module")
def hung() -> Iterator[HungUpstream]:
    upstream = HungUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., GatewayProcess], hung: HungUpstream) -> GatewayProcess:
    config: dict[str, Any] = {
        "server": {"request_timeout_s": 20},
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "hung": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{hung.port}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": {"connect_s": 1.0, "read_s": READ_S},
            },
            "backup": {"kind": "simulated"},
        },
        "routing": {
            "cooldown_failures": 3,
            "cooldown_s": COOLDOWN_S,
            "same_deployment_retries": 0,
        },
        "models": [
            {"name": "primary", "id": "hung/m", "provider": "hung", "model": "gpt-4o-mini"},
            {"name": "backup", "id": "sim/m", "provider": "backup", "model": "sim"},
        ],
        "routes": [{"name": "pair", "policy": "fallback", "models": ["hung/m", "sim/m"]}],
    }
    return start_gateway(config)


async def _burst(gateway: GatewayProcess) -> tuple[Counter[int], list[float]]:
    limits = httpx.Limits(max_connections=BURST)
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    body = {"model": "pair", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(limits=limits, timeout=30.0, headers=headers) as client:

        async def one() -> tuple[int, float]:
            started = time.monotonic()
            answer = await client.post(f"{gateway.base_url}/chat/completions", json=body)
            return answer.status_code, time.monotonic() - started

        results = await asyncio.gather(*(one() for _ in range(BURST)))
    return Counter(status for status, _ in results), [took for _, took in results]


def test_a_burst_is_served_by_the_backup_while_the_primary_hangs(
    gateway: GatewayProcess, hung: HungUpstream
) -> None:
    statuses, _ = asyncio.run(_burst(gateway))
    assert statuses == {200: BURST}
    assert hung.connections >= 3  # the primary was tried (then cooled down)


def test_after_the_cooldown_one_request_probes_and_the_rest_go_on(
    gateway: GatewayProcess, hung: HungUpstream
) -> None:
    asyncio.run(_burst(gateway))  # trips the breaker (if the test above did not run)
    time.sleep(COOLDOWN_S + 0.5)  # cooldown over: half-open
    before = hung.connections
    statuses, took = asyncio.run(_burst(gateway))
    assert statuses == {200: BURST}
    assert hung.connections - before <= 1  # one probe, not the whole burst
    # All but the probe went straight to the backup, without waiting on the primary.
    assert sorted(took)[BURST - 2] < READ_S
