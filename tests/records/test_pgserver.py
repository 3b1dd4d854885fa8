"""The tests' PostgreSQL (tests/pgserver.py): stopped and started again on the same port,
it keeps its data, and an engine made before the stop reconnects after the start."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.config import DatabaseConfig
from gateway.records.db import create_engine
from tests.pgserver import PostgresServer


def test_stop_start_keeps_data(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("pgserver_restart")
    port = postgres_server.port
    engine = create_engine(DatabaseConfig(url=url, connect_timeout_s=1))

    async def execute(sql: str) -> None:
        async with engine.begin() as connection:
            await connection.execute(text(sql))

    async def scalar(sql: str) -> object:
        async with engine.begin() as connection:
            return (await connection.execute(text(sql))).scalar()

    async def scenario() -> None:
        try:
            await execute("CREATE TABLE kept (x integer)")
            await execute("INSERT INTO kept VALUES (41)")
            postgres_server.stop()
            assert not postgres_server.running()
            with pytest.raises((DBAPIError, OSError)):
                await scalar("SELECT x FROM kept")
            postgres_server.start()
            # The same engine: its pool's dead connections are replaced (pool_pre_ping).
            assert await scalar("SELECT x + 1 FROM kept") == 42
            postgres_server.stop("immediate")  # a crash: recovery at the next start
            postgres_server.start()
            assert await scalar("SELECT count(*) FROM kept") == 1
        finally:
            if not postgres_server.running():
                postgres_server.start()
            await engine.dispose()

    asyncio.run(scenario())
    assert postgres_server.port == port
    assert postgres_server.psql("SELECT x FROM kept", "pgserver_restart").strip() == "41"
