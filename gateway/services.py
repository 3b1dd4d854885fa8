"""Everything a request may touch, built once by the app's lifespan.

`Services` extends what the pipeline needs (`PipelineParts`) with what only the HTTP
handlers use: the pipeline is handed the same object, and sees only its parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.cache import ResponseCache
from gateway.config import RequestLimits
from gateway.keys import KeyAdmin, KeyStore
from gateway.pipeline import PipelineParts
from gateway.records import Database
from gateway.redis import SharedRedis
from gateway.telemetry import AccessLog


class Lifecycle:
    """Where the process is in its life. `draining`: a SIGTERM came and the process is
    about to stop accepting (`server.shutdown_delay_s`): /readyz answers 503."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


@dataclass(frozen=True, slots=True)
class Services(PipelineParts):
    keys: KeyStore
    key_admin: KeyAdmin
    request_limits: RequestLimits
    access_log: AccessLog | None  # None: access logging off
    database: Database  # the system of record: keys, ledger, request log (SQL)
    redis: SharedRedis | None = None
    cache: ResponseCache | None = None  # None: no route caches
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
