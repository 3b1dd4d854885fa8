"""Every Prometheus metric, declared once, with `record_*` helpers for the pipeline.

Label values are bounded: routes, deployments and providers come from config, and
anything a client sent that is not in config is reported as "unknown". Never a
request id, a key or a prompt. With several workers, prometheus_client's
multiprocess mode is used (PROMETHEUS_MULTIPROC_DIR, set by `gateway serve`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from gateway import __version__
from gateway.context import RequestContext

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
TOKEN_KINDS = ("input", "output", "cached_input")
CACHE_RESULTS = ("hit", "miss", "bypass")


class Metrics:
    def __init__(self, registry: CollectorRegistry, multiproc_dir: str | None = None) -> None:
        self.registry = registry
        self._multiproc_dir = multiproc_dir
        r = registry
        route = ("endpoint", "route", "deployment", "provider")
        self.requests = Counter(
            "gateway_requests",
            "Client requests by outcome.",
            (*route, "status_class", "cache"),
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "End-to-end request latency.",
            ("endpoint", "route", "stream"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Gateway time outside the upstream call.",
            ("endpoint",),
            buckets=OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Upstream attempts by outcome.",
            ("provider", "deployment", "outcome"),
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Upstream call latency (to last byte).",
            ("provider", "deployment"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time to first content token, streams.",
            ("provider", "deployment"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens by kind.", ("provider", "deployment", "kind"), registry=r
        )
        self.cost = Counter(
            "gateway_cost_usd", "Spend in USD.", ("provider", "deployment"), registry=r
        )
        self.key_cost = Counter(
            "gateway_key_cost_usd",
            "Spend in USD by gateway key and team.",
            ("key", "team"),
            registry=r,
        )
        self.cache_requests = Counter(
            "gateway_cache_requests", "Cache lookups by result.", ("result",), registry=r
        )
        self.cache_saved = Counter(
            "gateway_cache_saved_usd", "USD not spent thanks to hits.", registry=r
        )
        self.retries = Counter(
            "gateway_retries", "Same-deployment retries.", ("deployment",), registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks", "Moves to the next deployment.", ("route", "reason"), registry=r
        )
        self.cooldown = Gauge(
            "gateway_deployment_cooldown",
            "1 while a deployment cools down.",
            ("deployment",),
            registry=r,
            multiprocess_mode="max",
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being served.",
            ("endpoint",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejections = Counter(
            "gateway_rejections", "Requests refused by limits.", ("reason",), registry=r
        )
        self.redis_errors = Counter(
            "gateway_redis_errors", "Failed Redis operations.", ("operation",), registry=r
        )
        self.build_info = Gauge(
            "gateway_build_info",
            "Build information.",
            ("version",),
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(__version__).set(1)

    def initialise(self, deployments: Iterable[tuple[str, str]]) -> None:
        """Known label sets start at zero so dashboards show lines before traffic."""
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)
        for deployment_id, provider in deployments:
            self.cooldown.labels(deployment_id).set(0)
            for kind in TOKEN_KINDS:
                self.tokens.labels(provider, deployment_id, kind)
            self.cost.labels(provider, deployment_id)

    def render(self) -> bytes:
        if self._multiproc_dir:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]  # untyped lib
                registry, path=self._multiproc_dir
            )
            return generate_latest(registry)
        return generate_latest(self.registry)

    def record_request(self, ctx: RequestContext) -> None:
        status_class = f"{ctx.status // 100}xx"
        route = ctx.route or "unknown"
        deployment = ctx.deployment_id or "none"
        cache = (ctx.cache or "off").lower()
        self.requests.labels(
            ctx.endpoint, route, deployment, ctx.provider or "none", status_class, cache
        ).inc()
        elapsed_s = ctx.elapsed_s()
        self.request_duration.labels(
            ctx.endpoint, route, "true" if ctx.stream else "false"
        ).observe(elapsed_s)
        if ctx.upstream_s is not None and not ctx.stream:
            self.overhead.labels(ctx.endpoint).observe(max(0.0, elapsed_s - ctx.upstream_s))

    def record_attempt(
        self, provider: str, deployment: str, outcome: str, duration_s: float
    ) -> None:
        self.upstream_requests.labels(provider, deployment, outcome).inc()
        if outcome == "ok":
            self.upstream_duration.labels(provider, deployment).observe(duration_s)

    def record_usage(self, ctx: RequestContext, key_label: str, team_label: str) -> None:
        usage, provider, deployment = ctx.usage, ctx.provider or "none", ctx.deployment_id or "none"
        if usage is not None:
            self.tokens.labels(provider, deployment, "input").inc(usage.prompt_tokens)
            self.tokens.labels(provider, deployment, "output").inc(usage.completion_tokens)
            if usage.cached_tokens:
                self.tokens.labels(provider, deployment, "cached_input").inc(usage.cached_tokens)
        if ctx.cost_usd:
            self.cost.labels(provider, deployment).inc(ctx.cost_usd)
            self.key_cost.labels(key_label, team_label).inc(ctx.cost_usd)
        if ctx.ttft_s is not None and ctx.stream:
            self.ttft.labels(provider, deployment).observe(ctx.ttft_s)
