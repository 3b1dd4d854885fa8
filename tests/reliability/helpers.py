"""What several reliability modules need: their own fake upstream, metric deltas between
two scrapes, and a request's access line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
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
