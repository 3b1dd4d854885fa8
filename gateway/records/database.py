"""The system of record as the app holds it: the engine, its readers and writer, and
their start-up and shutdown.

Start-up never waits for an unreachable database: the schema upgrade (when
`database.migrate: auto`) is retried in the background until it succeeds, requests are
served meanwhile with the config keys, and request records wait in the writer's buffer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import DatabaseConfig
from gateway.records.ledger import Ledger, LedgerSpend, RequestLog
from gateway.records.migrate import upgrade
from gateway.records.responses import ResponseStore
from gateway.records.writer import RequestRecords

log = logging.getLogger("gateway")

LEDGER_REFRESH_S = 2.0  # how stale the budget floors (LedgerSpend) may be
_START_WAIT_S = 5.0  # at start-up, how long to wait for the schema before serving anyway
_MIGRATE_RETRY_S = 5.0


@dataclass(slots=True)
class Database:
    engine: AsyncEngine
    ledger: Ledger
    ledger_spend: LedgerSpend
    request_log: RequestLog
    records: RequestRecords | None  # None: `database.records: false`
    responses: ResponseStore  # stored Responses (`POST /v1/responses`)
    _schema_task: asyncio.Task[None] | None = None

    async def start(self, config: DatabaseConfig) -> None:
        """Migrates (or waits up to `_START_WAIT_S` for it), loads the budget floors,
        starts the background writer and the floors' refresh."""
        if config.migrate == "auto":
            self._schema_task = asyncio.create_task(self._ensure_schema(config), name="db-schema")
            done, _ = await asyncio.wait({self._schema_task}, timeout=_START_WAIT_S)
            if not done:
                log.warning("sql not reachable at start-up: serving with config keys meanwhile")
        try:
            async with asyncio.timeout(_START_WAIT_S):
                await self.ledger_spend.refresh()
        except TimeoutError:
            pass
        self.ledger_spend.start()
        if self.records is not None:
            self.records.start()
        self.responses.start()

    async def _ensure_schema(self, config: DatabaseConfig) -> None:
        logged = False
        while True:
            try:
                await upgrade(config)
                return
            except Exception as exc:  # unreachable, or starting up: try again
                if not logged:
                    log.warning("sql schema upgrade failed (%s); retrying", type(exc).__name__)
                    logged = True
            await asyncio.sleep(_MIGRATE_RETRY_S)

    async def written(self, timeout_s: float = 2.0) -> None:
        """Writes what is buffered now (bounded): an admin read right after a request
        sees it. Gives up quietly when SQL is slow or down."""
        if self.records is not None:
            await self.records.drain(timeout_s)

    async def aclose(self) -> None:
        if self._schema_task is not None:
            self._schema_task.cancel()
            await asyncio.gather(self._schema_task, return_exceptions=True)
        await self.ledger_spend.aclose()
        if self.records is not None:
            await self.records.aclose()
        await self.responses.aclose()
        await self.engine.dispose()
