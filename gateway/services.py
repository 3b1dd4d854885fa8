"""Everything a request may touch, built once by the app's lifespan.

`Services` extends what the pipeline needs (`PipelineParts`) with what only the HTTP
handlers use: the pipeline is handed the same object, and sees only its parts."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cache import ResponseCache
from gateway.config import RequestLimits
from gateway.keys import KeyAdmin, KeyStore
from gateway.pipeline import PipelineParts
from gateway.records import Database
from gateway.redis import SharedRedis
from gateway.telemetry import AccessLog


@dataclass(frozen=True, slots=True)
class Services(PipelineParts):
    keys: KeyStore
    key_admin: KeyAdmin
    request_limits: RequestLimits
    access_log: AccessLog | None  # None: access logging off
    database: Database  # the system of record: keys, ledger, request log (SQL)
    redis: SharedRedis | None = None
    cache: ResponseCache | None = None  # None: no route caches
