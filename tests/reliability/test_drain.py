"""SIGTERM drains, within `server.drain_timeout_s`, through real gateway processes.

On SIGTERM the gateway stops taking connections and lets requests in flight finish,
streams included; a stream still running at the drain timeout is cut there, billed for
what it produced, and the process exits. One worker and two (uvicorn's supervisor
passes SIGTERM on to workers that drain with the same bound).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.gatewayproc import REPO, GatewayProcess
from tests.reliability.helpers import own_fake

WORDS = 60
REPLY = " ".join(f"w{i}" for i in range(WORDS))
ASK = [{"role": "user", "content": "Tell me a long story."}]
SLACK_S = 2.5  # on top of a bound: the supervisor's 0.5 s signal poll, a loaded box


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    yield from own_fake(REPLY)


def start(
    fake: FakeOpenAI, workdir: Path, drain_s: float, workers: int, delay_s: float = 0.0
) -> GatewayProcess:
    config = {
        "server": {"drain_timeout_s": drain_s, "shutdown_delay_s": delay_s},
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "fake": {"kind": "openai", "base_url": f"{fake.base_url}/v1", "api_key": OPENAI_KEY}
        },
        "models": [
            {
                "name": "m",
                "provider": "fake",
                "model": "gpt-4o-mini",
                "input_price_per_mtok_usd": 1.0,
                "output_price_per_mtok_usd": 2.0,
            }
        ],
    }
    return GatewayProcess(config, workdir, workers=workers).start()


def stream_through_sigterm(
    gateway: GatewayProcess, request_id: str
) -> tuple[list[str], BaseException | None, float, float, bool]:
    """Streams, sending SIGTERM once the first content arrives. Returns the content
    pieces, the error that ended the stream (None: it completed), when its last piece
    came and when the process exited (seconds after the SIGTERM), and whether a new
    request was served during the drain."""
    assert gateway.proc is not None
    client = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    pieces: list[str] = []
    error: BaseException | None = None
    sent_at = last_at = 0.0
    served_while_draining: bool | None = None
    try:
        with client.chat.completions.create(
            model="m", messages=ASK, stream=True, extra_headers={"x-request-id": request_id}
        ) as stream:
            for chunk in stream:
                content = chunk.choices[0].delta.content if chunk.choices else None
                if not content:
                    continue
                pieces.append(content)
                last_at = time.monotonic()
                if not sent_at:
                    gateway.proc.send_signal(signal.SIGTERM)
                    sent_at = time.monotonic()
                elif served_while_draining is None and last_at - sent_at > 0.7:
                    served_while_draining = served(gateway)
    except (openai.APIError, httpx.TransportError) as exc:
        error = exc
    gateway.proc.wait(30)
    exited_at = time.monotonic()
    assert sent_at and served_while_draining is not None
    return pieces, error, last_at - sent_at, exited_at - sent_at, served_while_draining


def served(gateway: GatewayProcess) -> bool:
    try:
        return httpx.get(f"{gateway.url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def logged_request(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    """The request log's row, read with `gateway requests` once the gateway is gone."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "requests", request_id, "--json"]
        + ["--config", str(gateway.config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["data"]
    return dict(row)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_in_flight_finishes_before_the_process_exits(
    fake: FakeOpenAI, tmp_path: Path, workers: int
) -> None:
    drain_s = 10.0
    gateway = start(fake, tmp_path, drain_s, workers)
    try:
        fake.script(Behaviour(chunk_delay_s=0.05))  # about 3 s of stream
        request_id = f"drain-{uuid.uuid4().hex}"
        pieces, error, _, exited_s, served_while_draining = stream_through_sigterm(
            gateway, request_id
        )
    finally:
        gateway.stop()
    assert error is None and "".join(pieces).split() == REPLY.split()  # all of it
    assert not served_while_draining  # no new connection taken meanwhile
    assert exited_s < drain_s - 2  # exits once drained, not at the drain timeout
    row = logged_request(gateway, request_id)
    assert (row["status"], row["stream_outcome"], row["usage_estimated"]) == (
        200,
        "complete",
        False,
    )
    assert row["output_tokens"] == fake.usage()["completion_tokens"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_longer_than_the_drain_is_cut_billed_and_the_process_exits(
    fake: FakeOpenAI, tmp_path: Path, workers: int
) -> None:
    drain_s = 1.0
    gateway = start(fake, tmp_path, drain_s, workers)
    try:
        fake.script(Behaviour(chunk_delay_s=0.1))  # about 6 s of stream
        request_id = f"drain-cut-{uuid.uuid4().hex}"
        pieces, error, last_s, exited_s, served_while_draining = stream_through_sigterm(
            gateway, request_id
        )
    finally:
        gateway.stop()
    # Cut: no [DONE] (openai 2.x lets httpx's error through mid-stream, 3.x wraps it).
    assert isinstance(error, (openai.APIConnectionError, httpx.RemoteProtocolError))
    assert 0 < len(pieces) < WORDS
    assert drain_s - 0.3 < last_s < drain_s + SLACK_S  # cut at about the drain timeout
    assert exited_s < drain_s + SLACK_S + 1
    assert not served_while_draining
    # Billed for what it produced (estimated: the final usage never came).
    row = logged_request(gateway, request_id)
    assert (row["status"], row["usage_estimated"]) == (200, True)
    assert row["output_tokens"] > 0
    cost = (row["input_tokens"] * 1.0 + row["output_tokens"] * 2.0) / 1e6
    assert row["cost_usd"] == pytest.approx(cost)


@pytest.mark.parametrize("workers", [1, 2])
def test_shutdown_delay_reports_draining_and_serves_before_the_listener_closes(
    fake: FakeOpenAI, tmp_path: Path, workers: int
) -> None:
    """`server.shutdown_delay_s`: from the SIGTERM on, /readyz answers 503 `draining`
    (a load balancer takes the replica out) while new connections are still accepted
    and served; then the listener closes, and the process drains and exits."""
    delay_s = 2.0
    gateway = start(fake, tmp_path, 1.0, workers, delay_s)
    try:
        assert httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200
        assert gateway.proc is not None
        sent_at = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        deadline = sent_at + delay_s / 2
        while (ready := httpx.get(f"{gateway.url}/readyz", timeout=5)).status_code != 503:
            assert time.monotonic() < deadline, "still ready after the SIGTERM"
            time.sleep(0.02)
        assert ready.json()["status"] == "draining"
        with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
            fake.script(Behaviour())
            answer = sdk.chat.completions.create(model="m", messages=ASK)  # a new connection
        assert answer.choices[0].message.content == REPLY
        assert time.monotonic() - sent_at < delay_s  # served within the delay
        gateway.proc.wait(delay_s + 1.0 + SLACK_S + 2)
        assert time.monotonic() - sent_at >= delay_s  # the delay was kept
    finally:
        gateway.stop()
