"""Alembic's environment for the gateway's schema (run by gateway.records.migrate).

No alembic.ini: the caller passes what to migrate in `config.attributes`, one of
- "connection": an open sync `Connection` (from `AsyncConnection.run_sync`): the
  migrations run on it, inside the caller's transaction and event loop;
- "database": a `DatabaseConfig`, or "url": an SQLAlchemy URL (else the main option
  `sqlalchemy.url`): an engine from gateway.records.db.create_engine, in a new event loop
  (`asyncio.run`: only for callers that are not already inside one, e.g. a plain
  `alembic` command line pointed at this directory).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from gateway.config import DatabaseConfig
from gateway.records.db import create_engine, is_sqlite
from gateway.records.tables import metadata

config = context.config


def _database() -> DatabaseConfig:
    database = config.attributes.get("database")
    if isinstance(database, DatabaseConfig):
        return database
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return DatabaseConfig(url=url)


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters a table by copying it: batch mode does that for ALTERs.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(_database())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: the DDL as a script, for a DBA to review and run."""
    url = _database().sqlalchemy_url()
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
