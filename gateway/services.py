"""Everything a request may touch, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cache import ResponseCache
from gateway.config import Catalog, GatewayConfig
from gateway.dialects import RequestLimits
from gateway.keys import KeyAdmin, KeyStore
from gateway.limits import Limits
from gateway.providers import Provider
from gateway.redis import SharedRedis
from gateway.routing import Planner, RetryBudget, StatsStore
from gateway.telemetry import AccessLog, Metrics
from gateway.transport import Upstream


@dataclass(frozen=True)
class Services:
    config: GatewayConfig
    catalog: Catalog
    providers: dict[str, Provider]
    upstream: Upstream
    planner: Planner
    stats: StatsStore
    retry_budget: RetryBudget
    metrics: Metrics
    keys: KeyStore
    limits: Limits
    key_admin: KeyAdmin
    request_limits: RequestLimits
    access_log: AccessLog | None  # None: access logging off
    redis: SharedRedis | None = None
    cache: ResponseCache | None = None  # None: no route caches
