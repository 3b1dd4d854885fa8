"""Shared fixtures: fake upstreams (session-scoped, reset per test) and gateway launchers."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.azure_fake import FakeAzure
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess, RedisServer
from tests.pgserver import PostgresServer
from tests.redis_cluster import RedisBackend, RedisClusterDeployment, backend_of

# tests/container needs the image and a Docker Engine: scripts/test-container builds and
# starts both, then runs it (GATEWAY_CONTAINER_IMAGE set). The main suite leaves it out.
collect_ignore = [] if os.environ.get("GATEWAY_CONTAINER_IMAGE") else ["container"]

GATEWAY_KEY = "gw-test-key-0123456789"
OPENAI_KEY = "sk-fake-openai-key-CANARY-7d1f"
ANTHROPIC_KEY = "sk-ant-fake-key-CANARY-3b9e"
GEMINI_KEY = "AIza-fake-gemini-key-CANARY-5c2a"
AZURE_KEY = "azure-fake-key-CANARY-8e4b"
AZURE_DEPLOYMENTS = ("chat-prod", "embed-prod")  # deployments that exist on the fake resource

# Secrets no gateway log of the session may contain (rule 12): the shared keys above, the
# fakes' default keys, the SHA-256 of the shared gateway key, and every string that
# follows the suite's convention of a "-CANARY-" marker in test secrets.
LOG_SECRETS = (
    GATEWAY_KEY,
    hashlib.sha256(GATEWAY_KEY.encode()).hexdigest(),
    OPENAI_KEY,
    ANTHROPIC_KEY,
    GEMINI_KEY,
    AZURE_KEY,
    "sk-fake-openai-key",
    "sk-ant-fake-key",
    "gemini-fake-key",
    "azure-fake-key",
)
CANARY_MARK = re.compile(r"[\w.-]*-CANARY-[\w.-]*")


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
def _started_gateways() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def start_gateway(
    session_dir: Path, _started_gateways: list[GatewayProcess]
) -> Callable[..., GatewayProcess]:
    """Start gateways on demand; each is stopped at the end of the module that started
    it (`_stop_the_modules_gateways`), the rest at the end of the session."""

    def start(config: dict[str, Any], **kwargs: Any) -> GatewayProcess:
        gateway = GatewayProcess(config, session_dir, **kwargs).start()
        _started_gateways.append(gateway)
        return gateway

    return start


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_gateways(_started_gateways: list[GatewayProcess]) -> Iterator[None]:
    """Gateways a module started stop with it: each idle one still costs about 2% of a
    core (its sync loops), and a session that kept a hundred alive starved the
    start-up of later ones on a 2-core machine."""
    before = len(_started_gateways)
    yield
    for gateway in _started_gateways[before:]:
        gateway.stop()


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(session_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(session_dir: Path) -> Iterator[RedisClusterDeployment]:
    """A real Redis Cluster, 3 masters with a replica each (tests/redis_cluster.py),
    started the first time a test asks for it. Tests that kill a node start their own."""
    cluster = RedisClusterDeployment(session_dir / "redis-cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """The test's shared Redis: one `redis-server`, then (a second run) a Redis Cluster."""
    return backend_of(request)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster, started the first time a test asks for it. Each test
    module makes its own database (`create_database`); a test that stops the server
    starts it again (in a `finally`), on the same port."""
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session", autouse=True)
def _no_secrets_in_gateway_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole session, grep every gateway log it wrote for the suite's secrets.

    A session-scoped autouse fixture rather than a test ordered last: it runs whatever
    subset is selected (-k, one file, a re-run of failures), and since it is set up
    before any other session fixture it is torn down after them, i.e. after
    `start_gateway` has stopped every gateway and their logs are complete. A leak fails
    the session as an error at teardown of the last test. Logs are found under the
    session's base temp dir, so gateways that tests start in their own tmp_path count too.
    """
    yield
    leaks = []
    for log in sorted(tmp_path_factory.getbasetemp().rglob("gateway-*.log")):
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            found = [s for s in LOG_SECRETS if s in line] + CANARY_MARK.findall(line)
            if found:
                leaks.append(f"{log.name}:{number}: {sorted(set(found))}: {line[:300]}")
    assert not leaks, "secrets in gateway logs:\n" + "\n".join(leaks[:20])
