"""create_app(config) -> the ASGI app: the composition root. The lifespan builds the
services; gateway.api serves them."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.api import RequestContextMiddleware, asgi_app, start_in_process
from gateway.cache import build_response_cache
from gateway.config import (
    ConfigError,
    GatewayConfig,
    ModelCatalog,
    RequestLimits,
    build_catalog,
    default_catalog_path,
    env_config_path,
    environment_proxies,
    load_config,
    multiproc_dir,
)
from gateway.keys import KeyStore, build_key_admin
from gateway.limits import build_limits, export_budgets
from gateway.pipeline import Pipeline
from gateway.providers import SimulatedTransport, build_providers
from gateway.records import (
    LEDGER_REFRESH_S,
    Database,
    Ledger,
    LedgerSpend,
    RequestLog,
    RequestRecords,
    ResponseStore,
    create_engine,
)
from gateway.redis import shared_redis
from gateway.routing import Planner, RetryBudget, StatsStore, StatsSync
from gateway.services import Lifecycle, Services
from gateway.telemetry import AccessLog, Metrics, build_trimmer, configure_logging
from gateway.transport import DispatchingUpstream, http_upstream
from gateway.validate_config import pricing_problems, reference_problems

log = logging.getLogger("gateway")

# After the drain (`server.drain_timeout_s`), how long the requests it cut get to finish
# their accounting before the stores close.
CUT_REQUESTS_BOUND_S = 2.0


def build_services(config: GatewayConfig, registry: CollectorRegistry | None = None) -> Services:
    problems = reference_problems(config)
    if problems:
        raise ConfigError(problems)
    models = ModelCatalog.load(config.catalog_path or default_catalog_path())
    catalog = build_catalog(config, models)
    problems = pricing_problems(catalog)
    if problems:
        raise ConfigError(problems)
    for note in catalog.notes:
        log.warning("%s", note)
    active = {d.provider for d in catalog.deployments.values()}
    provider_configs = {n: p for n, p in config.providers.items() if n in active}
    providers = build_providers(provider_configs)
    simulated = {n: p.simulation for n, p in provider_configs.items() if p.kind == "simulated"}
    proxies = environment_proxies()  # read once; a provider's `proxy:` overrides them
    if proxies.http or proxies.https:
        log.info("upstream proxies from the environment: %s", proxies.describe())
    upstream = DispatchingUpstream(
        http_upstream(config.server.upstream_transport, proxies),
        {"simulated": SimulatedTransport(simulated)},
    )
    stats = StatsStore(
        half_open_probes=config.routing.half_open_probes,
        cooldown_failures=config.routing.cooldown_failures,
        cooldown_s=config.routing.cooldown_s,
    )
    metrics = Metrics(registry or CollectorRegistry(), multiproc_dir())
    routes_of: dict[str, list[str]] = {}
    for route in catalog.routes.values():
        for deployment_id in route.deployment_ids:
            routes_of.setdefault(deployment_id, []).append(route.name)
    metrics.initialise(
        ((d.id, d.provider, routes_of.get(d.id, ())) for d in catalog.deployments.values()),
        ((k.name, k.team or "none") for k in config.auth.keys),
        redis=config.redis is not None,
    )
    redis = None
    if config.redis is not None:
        redis = shared_redis(config.redis, metrics)
    engine = create_engine(config.database)
    ledger = Ledger(engine)
    ledger_spend = LedgerSpend(ledger, LEDGER_REFRESH_S)
    limits = build_limits(config, redis, metrics, catalog.deployments, ledger_spend.floor)
    keys = KeyStore(config.auth)
    export_budgets(keys, metrics, ledger_spend.floor if config.database.records else None)
    records = None
    if config.database.records:
        records = RequestRecords(engine, config.database, catalog.deployments, metrics)
    return Services(
        config=config,
        catalog=catalog,
        providers=providers,
        upstream=upstream,
        planner=Planner(catalog.routes, catalog.deployments, stats, limits.deployment_headroom),
        stats=stats,
        retry_budget=RetryBudget(
            config.routing.retry_budget_ratio, config.routing.retry_budget_min
        ),
        metrics=metrics,
        keys=keys,
        limits=limits,
        key_admin=build_key_admin(config, keys, engine, metrics),
        request_limits=RequestLimits.from_server(config.server),
        access_log=AccessLog() if config.server.access_log else None,
        redis=redis,
        cache=build_response_cache(config, redis, metrics, catalog.deployments),
        database=Database(
            engine,
            ledger,
            ledger_spend,
            RequestLog(engine),
            records,
            ResponseStore(engine, config.database),
        ),
    )


def tune_gc() -> None:
    """Fewer, cheaper collections under load.

    What start-up built lives as long as the process: frozen, the collector never
    walks it again. Requests allocate many short-lived containers, so the youngest
    generation is collected every 20,000 allocations instead of 700; with thousands
    of streams in flight, the default made collection a tenth of the CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def create_app(config: GatewayConfig) -> RequestContextMiddleware:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        services = build_services(config)
        _announce(services)
        delay_shutdown(config.server.shutdown_delay_s, services.lifecycle)
        database = services.database
        await database.start(config.database)
        sync = None
        if services.redis is not None:
            services.redis.start()
            interval_s = config.routing.stats_sync_interval_s
            sync = StatsSync(services.stats, services.redis, interval_s)
            sync.start()
        services.limits.start()
        services.metrics.start()
        await services.key_admin.start(services.redis)
        listener = start_in_process(services)  # only with `metrics.port`
        in_flight = services.metrics.in_flight_now
        trimmer = build_trimmer(config.server.idle_memory_trim_s, lambda: sum(in_flight.values()))
        if trimmer is not None:
            trimmer.start()
        tune_gc()
        try:
            yield {"services": services, "pipeline": Pipeline(services)}
        finally:
            # Requests that `server.drain_timeout_s` cut were cancelled just before this:
            # they bill and log on their way out, before the stores close under them.
            await _cut_requests_finished(in_flight)
            if trimmer is not None:
                await trimmer.stop()
            if listener is not None:
                listener.stop()
            await services.metrics.stop()
            services.metrics.close()
            if sync is not None:
                await sync.stop()
            await services.key_admin.aclose()
            await services.limits.aclose()
            await database.aclose()
            if services.cache is not None:
                await services.cache.aclose()
            await services.upstream.aclose()
            if services.redis is not None:
                await services.redis.aclose()
            if services.access_log is not None:
                services.access_log.flush()

    return asgi_app(config.server, lifespan)


async def _cut_requests_finished(in_flight: dict[str, int]) -> None:
    """Until no request is in flight, within `CUT_REQUESTS_BOUND_S` (their last steps,
    closing the upstream and settling, take milliseconds, a Redis deadline at most)."""
    deadline = time.monotonic() + CUT_REQUESTS_BOUND_S
    while any(in_flight.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


SignalHandler = Callable[[int, FrameType | None], Any]


def delay_shutdown(delay_s: float, lifecycle: Lifecycle) -> None:
    """`server.shutdown_delay_s`: a SIGTERM marks the process draining at once (/readyz
    503) and reaches uvicorn's own handler (stop accepting, drain) `delay_s` later; a
    second SIGTERM reaches it at once. Installed from the lifespan, inside uvicorn's
    signal capture (it puts its own handlers back when the server stops)."""
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if delay_s <= 0 or not callable(uvicorn_handler):
        return
    if threading.current_thread() is not threading.main_thread():
        return  # signals are the main thread's (a test client's lifespan runs elsewhere)
    loop = asyncio.get_running_loop()

    def received(sig: int, frame: FrameType | None) -> None:
        if lifecycle.draining:
            uvicorn_handler(sig, frame)
            return
        lifecycle.draining = True
        loop.call_soon_threadsafe(later, sig, frame)  # the loop's work, not a handler's

    def later(sig: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: not ready; accepting for %.1f s more, then draining", delay_s)
        loop.call_later(delay_s, uvicorn_handler, sig, frame)

    signal.signal(signal.SIGTERM, received)


def create_app_from_env() -> RequestContextMiddleware:
    """Factory for `uvicorn --factory` with several workers: the CLI passes the path."""
    config = load_config(env_config_path())
    configure_logging(config.server.log_level)
    return create_app(config)


def _announce(services: Services) -> None:
    config = services.config
    if config.auth.mode == "open":
        log.warning(
            "AUTH IS OPEN: any caller may use this gateway (auth.mode: open). "
            "Use gateway keys before exposing it beyond localhost."
        )
    routes = ", ".join(sorted(services.catalog.routes)) or "(none)"
    log.info(
        "gateway configured: %d deployments, routes: %s", len(services.catalog.deployments), routes
    )
