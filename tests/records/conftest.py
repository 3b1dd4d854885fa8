"""The system of record's tests run on both backends: an SQLite file and a real
PostgreSQL (the session's `postgres_server`), each test on a fresh, empty database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config import DatabaseConfig


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseConfig:
    if request.param == "sqlite":
        return DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    server = request.getfixturevalue("postgres_server")
    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    return DatabaseConfig(url=server.create_database(name))
