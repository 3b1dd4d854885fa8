"""`gateway db upgrade | downgrade | current`: the schema's migrations from the command line.
`gateway requests`: the request log, read straight from the database.

Each db action prints what it found and did on one line, naming the database by its URL
with the password hidden (`safe_url`): the output ends up in deploy logs.
"""

from __future__ import annotations

import asyncio
import sys

from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from gateway import jsonutil
from gateway.config import DatabaseConfig
from gateway.records import migrate
from gateway.records.db import create_engine, safe_url
from gateway.records.ledger import RequestLog, parse_moment
from gateway.records.writer import SQL_ERRORS

_COLUMNS = ("ts", "request_id", "key_name", "route", "deployment", "status", "cost_usd")


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


def run_requests(
    config: DatabaseConfig,
    request_id: str | None,
    search: dict[str, str | int | None],
    as_json: bool,
) -> int:
    """`gateway requests [ID] [--key K --since T --until T --status N --limit N]`."""
    try:
        since = parse_moment(str(search["since"])) if search.get("since") else None
        until = parse_moment(str(search["until"])) if search.get("until") else None
    except ValueError:
        sys.stderr.write("--since/--until: Unix seconds or an ISO 8601 time\n")
        return 2
    try:
        rows = asyncio.run(_requests(config, request_id, search, since, until))
    except SQL_ERRORS as exc:
        sys.stderr.write(f"cannot read the database: {type(exc).__name__}\n")
        return 1
    if as_json:
        sys.stdout.write(jsonutil.dumps({"object": "list", "data": rows}).decode() + "\n")
    else:
        lines = ["  ".join(_COLUMNS)]
        lines += ["  ".join("-" if r[c] is None else str(r[c]) for c in _COLUMNS) for r in rows]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if rows or request_id is None else 1


async def _requests(
    config: DatabaseConfig,
    request_id: str | None,
    search: dict[str, str | int | None],
    since: float | None,
    until: float | None,
) -> list[dict[str, object]]:
    engine = create_engine(config)
    try:
        log = RequestLog(engine)
        if request_id is not None:
            return await log.get(request_id)
        key, status, limit = search.get("key"), search.get("status"), search.get("limit")
        return await log.search(
            str(key) if key else None,
            since,
            until,
            int(status) if status is not None else None,
            int(limit) if limit is not None else 100,
        )
    finally:
        await engine.dispose()
