"""Everything a request may touch, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.catalog import Catalog
from gateway.config import GatewayConfig
from gateway.key_admin import KeyAdmin
from gateway.keys import KeyStore
from gateway.limits import Limits
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.planning import Planner
from gateway.providers.base import Provider
from gateway.redis_client import SharedRedis
from gateway.response_cache import ResponseCache
from gateway.retry_budget import RetryBudget
from gateway.stats import StatsStore
from gateway.upstream import Upstream
from gateway.validation import RequestLimits


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
