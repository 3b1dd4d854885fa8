"""The system of record in SQL: keys, the spend ledger and the request log.

SQL holds what must survive (money and access); Redis only what can be rebuilt. This
module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.records.commands import run_db, run_requests
from gateway.records.database import LEDGER_REFRESH_S, Database
from gateway.records.db import create_engine, is_sqlite, safe_url
from gateway.records.ledger import Ledger, LedgerRow, LedgerSpend, RequestLog, parse_moment
from gateway.records.responses import ResponseStore, StoredResponse
from gateway.records.tables import keys as KEY_TABLE
from gateway.records.tables import revoked_config_keys as REVOKED_CONFIG_TABLE
from gateway.records.tables import state as STATE_TABLE
from gateway.records.writer import SQL_ERRORS, RequestRecords, utc_day


class RecordsUnavailableError(Exception):
    """SQL could not be reached (the message names the error type, never the URL)."""


__all__ = [
    "KEY_TABLE",
    "LEDGER_REFRESH_S",
    "REVOKED_CONFIG_TABLE",
    "STATE_TABLE",
    "SQL_ERRORS",
    "Database",
    "Ledger",
    "LedgerRow",
    "LedgerSpend",
    "RecordsUnavailableError",
    "RequestLog",
    "RequestRecords",
    "ResponseStore",
    "create_engine",
    "is_sqlite",
    "parse_moment",
    "run_db",
    "run_requests",
    "safe_url",
    "StoredResponse",
    "utc_day",
]
