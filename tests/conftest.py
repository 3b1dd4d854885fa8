"""Shared fixtures: fake upstreams (session-scoped, reset per test) and gateway launchers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.azure_fake import FakeAzure
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess, RedisServer

GATEWAY_KEY = "gw-test-key-0123456789"
OPENAI_KEY = "sk-fake-openai-key-CANARY-7d1f"
ANTHROPIC_KEY = "sk-ant-fake-key-CANARY-3b9e"
GEMINI_KEY = "AIza-fake-gemini-key-CANARY-5c2a"
AZURE_KEY = "azure-fake-key-CANARY-8e4b"
AZURE_DEPLOYMENTS = ("chat-prod", "embed-prod")  # deployments that exist on the fake resource


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=OPENAI_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=ANTHROPIC_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini(api_key=GEMINI_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure(api_key=AZURE_KEY, deployments=AZURE_DEPLOYMENTS).start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> None:
    for name in request.fixturenames:
        if name.startswith("fake_"):
            request.getfixturevalue(name).reset()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="session")
def start_gateway(session_dir: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways on demand; all are stopped at the end of the session."""
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any], **kwargs: Any) -> GatewayProcess:
        gateway = GatewayProcess(config, session_dir, **kwargs).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(session_dir).start()
    yield server
    server.stop()
