"""`/v1/route/explain?dialect=` and `gateway explain --dialect`: the routing plan for a
body in any ingress dialect, the same from both, without calling any upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.features.dialects import three_provider_config
from tests.gatewayproc import REPO, GatewayProcess

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
ROUTE = "gpt-then-claude-then-gemini"
BODIES: dict[str, dict[str, Any]] = {
    "chat": {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]},
    "completions": {"model": ROUTE, "prompt": "hi"},
    "messages": {"model": ROUTE, "max_tokens": 100,
                 "messages": [{"role": "user", "content": "hi"}]},
    "responses": {"model": ROUTE, "input": "hi"},
}  # fmt: skip


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> GatewayProcess:
    return start_gateway(three_provider_config(fake_openai, fake_anthropic, fake_gemini))


def explain(gateway: GatewayProcess, dialect: str, body: dict[str, Any]) -> httpx.Response:
    url = f"{gateway.base_url}/route/explain"
    return httpx.post(url, params={"dialect": dialect}, json=body, headers=AUTH)


@pytest.mark.parametrize("dialect", list(BODIES))
def test_every_dialect_is_planned_as_chat_would_be(
    gateway: GatewayProcess,
    dialect: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
    tmp_path: Path,
) -> None:
    calls = len(fake_openai.received) + len(fake_anthropic.received) + len(fake_gemini.received)
    served = explain(gateway, dialect, BODIES[dialect])
    assert served.status_code == 200, served.text
    plan = served.json()
    assert plan["route"] == ROUTE
    assert [c["deployment_id"] for c in plan["ordered"]] == ["gpt", "claude", "gemini"]
    after = len(fake_openai.received) + len(fake_anthropic.received) + len(fake_gemini.received)
    assert after == calls  # no upstream was called
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(BODIES[dialect]))
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "explain", "--config", str(gateway.config_path),
         "--dialect", dialect, str(body_file)],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert json.loads(cli.stdout)["ordered"] == plan["ordered"]


def test_a_body_is_checked_in_its_dialect(gateway: GatewayProcess) -> None:
    # A Messages body without max_tokens is valid chat, but not a valid Messages request.
    chat_shaped = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}
    assert explain(gateway, "chat", chat_shaped).status_code == 200
    refused = explain(gateway, "messages", chat_shaped)
    assert refused.status_code == 400 and "max_tokens" in refused.text
    unknown = explain(gateway, "klingon", chat_shaped)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "dialect"
