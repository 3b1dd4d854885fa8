"""`gateway db upgrade | downgrade | current`: the schema's migrations from the command line.

Each prints what it found and did on one line, naming the database by its URL with the
password hidden (`safe_url`): the output ends up in deploy logs.
"""

from __future__ import annotations

import asyncio
import sys

from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import DatabaseConfig
from gateway.records import migrate
from gateway.records.db import safe_url


def run_db(config: DatabaseConfig, action: str, revision: str | None) -> int:
    """Run one `gateway db` action; 0 on success, 1 (and a line on stderr) on failure."""
    url = safe_url(config.sqlalchemy_url())
    try:
        line = asyncio.run(_run(config, action, revision))
    except (CommandError, SQLAlchemyError, OSError, migrate.MigrationLockTimeout) as exc:
        sys.stderr.write(f"gateway db {action}: {url}: {exc}\n")
        return 1
    sys.stdout.write(f"{url}: {line}\n")
    return 0


async def _run(config: DatabaseConfig, action: str, revision: str | None) -> str:
    before = await migrate.current(config)
    if action == "current":
        return f"at {_describe(before)}"
    if action == "upgrade":
        await migrate.upgrade(config, revision or "head")
    elif action == "downgrade":
        if revision is None:
            raise CommandError("downgrade needs --revision (a revision, or base)")
        await migrate.downgrade(config, revision)
    else:
        raise CommandError(f"unknown action {action!r}")
    after = await migrate.current(config)
    if after == before:
        return f"already at {_describe(after)}"
    verb = "upgraded" if action == "upgrade" else "downgraded"
    return f"{verb} from {_describe(before)} to {_describe(after)}"


def _describe(revision: str | None) -> str:
    head = migrate.head_revision()
    if revision is None:
        return "no revision (base)"
    if revision == head:
        return f"{revision} (head)"
    return f"{revision} (head is {head})"
