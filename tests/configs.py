"""Gateway configs that several test modules share."""

from __future__ import annotations

from typing import Any

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import free_port


def fake_and_dead(
    fake: FakeOpenAI, server: dict[str, Any], fake_timeouts: dict[str, float]
) -> dict[str, Any]:
    """One gateway key; `gpt-test` on the fake OpenAI upstream (with `fake_timeouts`),
    `dead-model` on a port where nothing listens (connection refused); no retry in
    place, so each case makes one upstream attempt."""
    return {
        "server": server,
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "fake": {
                "kind": "openai",
                "base_url": f"{fake.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": fake_timeouts,
            },
            "dead": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                "api_key": OPENAI_KEY,
            },
        },
        "routing": {"same_deployment_retries": 0},
        "models": [
            {"name": "gpt-test", "provider": "fake", "model": "gpt-4o-mini"},
            {"name": "dead-model", "provider": "dead", "model": "gpt-4o-mini"},
        ],
    }
