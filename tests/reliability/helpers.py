"""What several reliability modules need: their own fake upstream, metric deltas between
two scrapes, and a request's access line."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any, Self

import openai
import pytest

from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import free_port
from tests.gatewayproc import GatewayProcess
from tests.promtext import Scrape, eventually, scrape_until


def own_fake(reply: str) -> Iterator[FakeOpenAI]:
    """A module's own fake OpenAI upstream answering `reply` (yield from a fixture)."""
    fake = FakeOpenAI(api_key=OPENAI_KEY).start()
    fake.reply = reply
    yield fake
    fake.stop()


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def requests_settled(gateway: GatewayProcess, before: Scrape, routes: list[str]) -> Scrape:
    """The scrape once every one of `routes` counted one more request (after the last byte)."""

    def done(s: Scrape) -> bool:
        return all(delta(s, before, "gateway_requests_total", route=r) == 1 for r in routes)

    return scrape_until(gateway.url, done)


def access_line(gateway: GatewayProcess, request_id: str) -> dict[str, Any] | None:
    for line in gateway.log_text().splitlines():
        if request_id in line and '"access"' in line:
            return dict(json.loads(line))
    return None


def wait_access_line(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    assert eventually(lambda: access_line(gateway, request_id) is not None)
    line = access_line(gateway, request_id)
    assert line is not None
    return line


def stream_until_error(
    client: openai.OpenAI, route: str, messages: Any, request_id: str | None = None
) -> tuple[list[Any], openai.APIError]:
    """The chunks of a stream the gateway ends with an in-band error, and the error the
    SDK raised for it (a test then checks it is no cut connection)."""
    received: list[Any] = []
    headers = {"x-request-id": request_id} if request_id is not None else None
    with (
        client.chat.completions.create(
            model=route, messages=messages, stream=True, extra_headers=headers
        ) as stream,
        pytest.raises(openai.APIError) as info,
    ):
        for chunk in stream:
            received.append(chunk)
    return received, info.value


class TcpHop:
    """A TCP hop on a free loopback port in front of `target_port`, served by an asyncio
    loop in a thread of its own: subclasses say what a connection does (`_connection`)."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError
