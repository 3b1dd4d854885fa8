"""The schema's migrations (gateway/records/migrations) on SQLite and a real PostgreSQL:
from empty to head, the result equal to `tables.metadata`, an upgrade that keeps the
keys, a downgrade, concurrent upgrades, and `gateway db` as a real subprocess."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, inspect, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from gateway.config import DatabaseConfig
from gateway.records import migrate, tables
from gateway.records.db import create_engine
from tests.fakes.server import free_port

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

KEY_ROW: dict[str, Any] = {
    "id": "k-1",
    "name": "team-a-prod",
    "team": "team-a",
    "routes": '["chat"]',
    "rpm": 60,
    "tpm": None,
    "budget_usd": None,
    "budget_period": "month",
    "labels": "{}",
    "max_concurrent": None,
    "created_at": 1_700_000_000.5,
    "revoked_at": None,
    "digest": "d" * 64,
    "old_digest": "",
    "old_until": 0.0,
    "version": 1,
}


def on_connection(database: DatabaseConfig, work: Callable[[Connection], T]) -> T:
    """Run `work` on a sync connection of a fresh engine, in one committed transaction."""

    async def run() -> T:
        engine = create_engine(database)
        try:
            async with engine.begin() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, tables.metadata))


def count(table: Any) -> Callable[[Connection], int]:
    return lambda connection: int(connection.scalar(select(func.count()).select_from(table)))


GATEWAY_TABLES = set(tables.metadata.tables)
KEY_TABLES = {"gateway_state", "gateway_keys", "gateway_revoked_config_keys"}


def test_revisions_are_linear() -> None:
    assert migrate.head_revision() == "0004_stored_responses"


def test_upgrade_empty_to_head(database: DatabaseConfig) -> None:
    assert run(migrate.current(database)) is None
    assert on_connection(database, table_names) == set()
    run(migrate.upgrade(database))
    assert run(migrate.current(database)) == migrate.head_revision()
    assert on_connection(database, table_names) == GATEWAY_TABLES | {"alembic_version"}
    run(migrate.upgrade(database))  # at head already: nothing to do
    assert run(migrate.current(database)) == migrate.head_revision()


def test_migrated_schema_equals_metadata(database: DatabaseConfig) -> None:
    run(migrate.upgrade(database))
    assert on_connection(database, schema_diff) == []


def test_live_key_names_are_unique(database: DatabaseConfig) -> None:
    """The partial unique index (compare_metadata does not compare its WHERE): a revoked
    key frees its name, two live keys cannot share one."""
    run(migrate.upgrade(database))

    def revoked_then_live(connection: Connection) -> None:
        connection.execute(insert(tables.keys), [{**KEY_ROW, "revoked_at": 1.0}])
        connection.execute(insert(tables.keys), [{**KEY_ROW, "id": "k-2"}])

    on_connection(database, revoked_then_live)
    with pytest.raises(IntegrityError):
        on_connection(
            database,
            lambda c: c.execute(insert(tables.keys), [{**KEY_ROW, "id": "k-3"}]),
        )


def test_upgrade_from_previous_revision_keeps_keys(database: DatabaseConfig) -> None:
    run(migrate.upgrade(database, "0001_keys"))
    assert run(migrate.current(database)) == "0001_keys"
    assert on_connection(database, table_names) == KEY_TABLES | {"alembic_version"}

    def write_keys(connection: Connection) -> None:
        connection.execute(insert(tables.keys), [KEY_ROW])
        connection.execute(insert(tables.state), [{"name": "keys_version", "value": 7}])
        connection.execute(
            insert(tables.revoked_config_keys),
            [{"digest": "e" * 64, "revoked_at": 2.0, "version": 7}],
        )

    on_connection(database, write_keys)
    run(migrate.upgrade(database))
    assert run(migrate.current(database)) == migrate.head_revision()
    rows = on_connection(
        database, lambda c: [dict(r._mapping) for r in c.execute(select(tables.keys))]
    )
    assert rows == [{**KEY_ROW, "log_payloads": False}]  # 0003's column, its default
    assert on_connection(database, lambda c: c.scalar(select(tables.state.c.value))) == 7
    assert on_connection(database, count(tables.revoked_config_keys)) == 1
    assert on_connection(database, count(tables.spend)) == 0
    assert on_connection(database, schema_diff) == []


def test_payload_columns_come_and_go_keeping_the_request_log(database: DatabaseConfig) -> None:
    """From the previous revision up and one step down: the request log's rows stay."""
    previous = "0002_ledger_and_request_log"
    run(migrate.upgrade(database, previous))

    def log_a_request(connection: Connection) -> None:
        columns = ", ".join(("request_id", "ts", "day", "endpoint", "status", "attempts"))
        values = "('r-1', 1.0, '2026-12-07', 'chat', 200, 1)"
        connection.exec_driver_sql(
            f"INSERT INTO gateway_requests ({columns}, stream, latency_ms) "
            f"VALUES {values[:-1]}, false, 1.5)"
        )

    on_connection(database, log_a_request)
    run(migrate.upgrade(database))
    assert on_connection(database, schema_diff) == []
    payloads = select(tables.requests.c.request_id, tables.requests.c.request_payload)
    assert on_connection(database, lambda c: c.execute(payloads).all()) == [("r-1", None)]
    run(migrate.downgrade(database, previous))
    assert run(migrate.current(database)) == previous
    assert on_connection(database, count(tables.spend)) == 0
    assert on_connection(
        database, lambda c: c.exec_driver_sql("SELECT request_id FROM gateway_requests").all()
    ) == [("r-1",)]


def test_downgrade_one_step_drops_ledger_keeps_keys(database: DatabaseConfig) -> None:
    run(migrate.upgrade(database))
    on_connection(database, lambda c: c.execute(insert(tables.keys), [KEY_ROW]))
    run(migrate.downgrade(database, "0001_keys"))
    assert run(migrate.current(database)) == "0001_keys"
    assert on_connection(database, table_names) == KEY_TABLES | {"alembic_version"}
    assert on_connection(database, count(tables.keys)) == 1
    # The comparison is not vacuous: it sees exactly the tables that are missing.
    added = {d[1].name for d in on_connection(database, schema_diff) if d[0] == "add_table"}
    assert added == {
        "gateway_spend_daily",
        "gateway_requests",
        "gateway_record_batches",
        "gateway_responses",
    }
    run(migrate.upgrade(database))  # and back
    assert on_connection(database, schema_diff) == []
    run(migrate.downgrade(database, "base"))
    assert run(migrate.current(database)) is None
    assert on_connection(database, table_names) <= {"alembic_version"}


def test_concurrent_upgrades_migrate_once(database: DatabaseConfig) -> None:
    """Workers starting together: one migrates, the others wait and find it at head."""

    async def together() -> None:
        await asyncio.gather(*(migrate.upgrade(database) for _ in range(4)))

    run(together())
    assert run(migrate.current(database)) == migrate.head_revision()
    assert on_connection(database, schema_diff) == []


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": url, "connect_timeout_s": 2}}))
    return path


def test_cli_upgrade_and_current(database: DatabaseConfig, tmp_path: Path) -> None:
    url = make_url(database.sqlalchemy_url())
    if url.get_backend_name() == "postgresql":
        # Trust auth takes any password: one is there only to be kept out of the output.
        url = url.set(password="db-CANARY-password")
    config = write_config(tmp_path, url.render_as_string(hide_password=False))
    head = migrate.head_revision()

    result = gateway_cli("db", "current", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "no revision" in result.stdout

    result = gateway_cli("db", "upgrade", "--revision", "0001_keys", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "upgraded from no revision (base) to 0001_keys" in result.stdout

    result = gateway_cli("db", "upgrade", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"upgraded from 0001_keys (head is {head}) to {head} (head)" in result.stdout
    assert run(migrate.current(database)) == head

    result = gateway_cli("db", "current", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"at {head} (head)" in result.stdout

    result = gateway_cli("db", "downgrade", "--revision", "0001_keys", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"downgraded from {head} (head) to 0001_keys" in result.stdout
    assert run(migrate.current(database)) == "0001_keys"

    if url.password:
        assert "postgresql+asyncpg://postgres:***@127.0.0.1" in result.stdout
    assert "CANARY" not in result.stdout + result.stderr


def test_cli_unreachable_database_hides_password(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://gw:db-CANARY-password@127.0.0.1:{free_port()}/gateway"
    result = gateway_cli("db", "current", "--config", str(write_config(tmp_path, url)))
    assert result.returncode == 1
    assert "postgresql+asyncpg://gw:***@127.0.0.1" in result.stderr
    assert "CANARY" not in result.stdout + result.stderr
