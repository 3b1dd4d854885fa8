"""Schema migrations (Alembic), run from code: `gateway db upgrade` and the start-up
upgrade (`database.migrate: auto`) both call `upgrade`. The revisions ship inside the
package (gateway/records/migrations), so nothing needs an alembic.ini at run time.

Alembic is synchronous: the migrations run on the sync face of an async connection
(`AsyncConnection.run_sync`), so a caller already inside an event loop (the app's
start-up) can await them. Several workers and replicas may start at once against one
database: the first to get the migration lock migrates, the others wait for it and then
find the schema at head (a PostgreSQL advisory lock held by the migrating transaction; a
lock file beside an SQLite database).

A new revision (then written by hand, and checked by tests/records/test_migrations.py):

    .venv/bin/python -c "from alembic import command; from gateway.records.migrate \\
    import alembic_config; command.revision(alembic_config(), 'what', rev_id='0003_what')"
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url

from gateway.config import DatabaseConfig
from gateway.records.db import create_engine, is_sqlite

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock's key for "migrating the gateway's schema" (any constant that
# nothing else sharing the database uses: the first 8 bytes of "gw-migr").
ADVISORY_LOCK_KEY = int.from_bytes(b"gw-migr\0", "big")
SQLITE_LOCK_TIMEOUT_S = 120.0


class MigrationLockTimeout(RuntimeError):
    """Another process held the SQLite migration lock for too long."""


def alembic_config() -> Config:
    """Alembic's Config for the packaged revisions, without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s")  # versions/0003_what.py
    return config


def head_revision() -> str:
    """The newest revision this gateway ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


async def upgrade(config: DatabaseConfig, revision: str = "head") -> None:
    """Upgrade the database to `revision` (an empty database: create every table)."""
    await _migrate(config, lambda alembic: command.upgrade(alembic, revision))


async def downgrade(config: DatabaseConfig, revision: str) -> None:
    """Downgrade the database to `revision` ("base": drop every table of the gateway)."""
    await _migrate(config, lambda alembic: command.downgrade(alembic, revision))


async def current(config: DatabaseConfig) -> str | None:
    """The database's revision; None for a database that was never migrated."""
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current_revision)
    finally:
        await engine.dispose()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _migrate(config: DatabaseConfig, action: Callable[[Config], None]) -> None:
    url = config.sqlalchemy_url()
    async with _sqlite_lock(url):
        engine = create_engine(config)
        try:
            # One transaction: on PostgreSQL (transactional DDL) a failed revision leaves
            # the schema as it was, and the advisory lock is released at its end.
            async with engine.begin() as connection:
                await connection.run_sync(_run_locked, action)
        finally:
            await engine.dispose()


def _run_locked(connection: Connection, action: Callable[[Config], None]) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
    alembic = alembic_config()
    alembic.attributes["connection"] = connection  # read by migrations/env.py
    action(alembic)


@asynccontextmanager
async def _sqlite_lock(url: str) -> AsyncIterator[None]:
    """An exclusive lock on `<database>.migrate.lock` (nothing for other databases or an
    in-memory SQLite). Polled rather than blocking, so the event loop keeps running and a
    cancelled start-up does not leave a thread waiting on the lock."""
    database = make_url(url).database if is_sqlite(url) else None
    if not database or database == ":memory:":
        yield
        return
    path = Path(f"{database}.migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + SQLITE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MigrationLockTimeout(f"{path}: held by another process") from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
