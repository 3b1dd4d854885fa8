"""Every Prometheus metric, declared once, with `record_*` helpers for the pipeline.

Names follow Prometheus's rules: a `gateway_` prefix, base units in the name
(`_seconds`, `_usd`), `_total` on counters. Label values are bounded: routes,
deployments, providers and key names come from config, and anything a client sent
that is not in config is reported as "unknown". Never a request id, a secret or a
prompt. With several workers, prometheus_client's multiprocess mode is used
(PROMETHEUS_MULTIPROC_DIR, set by `gateway serve`); each gauge says how the
per-process values merge (`multiprocess_mode`). README "Metrics" lists them all.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from gateway import __version__
from gateway.context import RequestContext
from gateway.telemetry.pending import PendingCount, PendingHistogram, PendingMetrics

log = logging.getLogger("gateway")

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
# To 10 s: under load the overhead (queueing on a busy event loop included) passes 100 ms,
# and a quantile past the last finite bucket reads as that bucket.
OVERHEAD_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
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
)
# `input` includes `cached_input` and `cache_write_input`; `output` includes `reasoning`.
TOKEN_KINDS = ("input", "output", "cached_input", "cache_write_input", "reasoning")
CACHE_RESULTS = ("hit", "miss", "bypass")
REJECTION_REASONS = ("rpm", "tpm", "budget", "limits_unavailable", "overloaded")
IN_FLIGHT_ENDPOINTS = ("chat", "completions", "messages", "responses", "embeddings")
# Redis operations counted from the start when Redis is configured (others, e.g. the
# cache's, are added by their owner or on their first failure).
REDIS_OPERATIONS = ("limits", "stats")
# Per process. Config keys are few; runtime keys could be many, and each label value
# is a series forever: past this many, spend and rejections are reported under
# key="other" (and budgets not at all); teams likewise past MAX_TEAM_LABELS.
MAX_KEY_LABELS = 500
MAX_TEAM_LABELS = 100


def render_multiprocess(path: str) -> bytes:
    """The merged view of every worker's files (prometheus_client multiprocess mode)."""
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]  # untyped lib
        registry, path=path
    )
    return generate_latest(registry)


class Metrics:
    def __init__(self, registry: CollectorRegistry, multiproc_dir: str | None = None) -> None:
        # No `*_created` series: they double the series count, dashboards don't use them,
        # and multiprocess mode has none, so one worker or several expose the same names.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped lib
        self.registry = registry
        self._multiproc_dir = multiproc_dir
        self._key_pairs: set[tuple[str, str]] = set()
        self._teams: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._provider_of: dict[str, str] = {}  # deployment id -> provider (config)
        # Run before each flush (scrape-time values: key budgets), on the loop's thread.
        self._refreshers: list[Callable[[], None]] = []
        self._broken: list[Callable[[], None]] = []
        self._budgets: dict[tuple[str, str], tuple[float, float | None]] = {}
        # The hot path's updates, summed here and applied by `flush` (metrics_pending.py).
        self.pending = PendingMetrics()
        self._request_series: dict[tuple[Any, ...], _RequestSeries] = {}
        self._attempt_series: dict[tuple[str, str, str, bool], _AttemptSeries] = {}
        self._usage_series: dict[tuple[str, str, str], _UsageSeries] = {}
        self._key_costs: dict[tuple[str, str], PendingCount] = {}
        self._declare_requests(registry)
        self._declare_upstream(registry)
        self._declare_spend(registry)
        self._declare_health(registry)
        self._declare_limits(registry)
        self._declare_records(registry)
        self._declare_budgets(registry)
        self.build_info.labels(__version__).set(1)

    def _declare_requests(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests",
            "Client requests by route, deployment that answered, status class and cache result.",
            ("endpoint", "route", "deployment", "provider", "status_class", "cache"),
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "End-to-end request latency, to the last byte sent (streams included).",
            ("endpoint", "route", "stream"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Gateway time outside the upstream call (non-streamed requests).",
            ("endpoint",),
            buckets=OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Chat and embedding requests being served.",
            ("endpoint",),
            registry=r,
            multiprocess_mode="livesum",  # sum over live workers only
        )
        # Requests being served, by endpoint: counted here, set on the gauge at each flush.
        self.in_flight_now = dict.fromkeys(IN_FLIGHT_ENDPOINTS, 0)
        self._in_flight_children = {e: self.in_flight.labels(e) for e in IN_FLIGHT_ENDPOINTS}
        self.cache_requests = Counter(
            "gateway_cache_requests", "Cache lookups by result.", ("result",), registry=r
        )

    def _declare_upstream(self, r: CollectorRegistry) -> None:
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Upstream attempts by outcome.",
            ("provider", "deployment", "outcome"),
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Successful upstream attempts: to the whole body, or to the first content of a stream.",
            ("provider", "deployment", "stream"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streams: request start to the first content chunk sent.",
            ("provider", "deployment"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries", "Retries on the same deployment.", ("deployment",), registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Moves to the next deployment, by the failed attempt's outcome.",
            ("route", "reason"),
            registry=r,
        )

    def _declare_spend(self, r: CollectorRegistry) -> None:
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens by kind.",
            ("provider", "deployment", "route", "kind"),
            registry=r,
        )
        self.cost = Counter(
            "gateway_cost_usd", "Spend in USD.", ("provider", "deployment", "route"), registry=r
        )
        self.key_cost = Counter(
            "gateway_key_cost_usd",
            "Spend in USD by gateway key and team.",
            ("key", "team"),
            registry=r,
        )
        self.usage_estimated = Counter(
            "gateway_usage_estimated_requests",
            "Requests whose usage was estimated: the provider reported none.",
            ("provider", "deployment"),
            registry=r,
        )
        self.cache_saved = Counter(
            "gateway_cache_saved_usd", "USD not spent thanks to cache hits.", registry=r
        )

    def _declare_health(self, r: CollectorRegistry) -> None:
        self.cooldown_until = Gauge(
            "gateway_deployment_cooldown_until_timestamp_seconds",
            "Unix time a deployment's cooldown ends; it is cooling down while this is > time().",
            ("deployment",),
            registry=r,
            multiprocess_mode="max",  # the latest deadline in any worker
        )
        self.rejections = Counter(
            "gateway_rejections",
            "Requests refused by limits or overload, by gateway key (none: not known yet).",
            ("reason", "key"),
            registry=r,
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

    def _declare_records(self, r: CollectorRegistry) -> None:
        """The system of record's writer (gateway/records): rows waiting, written, lost."""
        self.records_pending = Gauge(
            "gateway_records_pending",
            "Request-log and ledger rows waiting to be written to SQL.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.records_written = Counter(
            "gateway_records_written", "Request rows written to SQL (ledger included).", registry=r
        )
        self.records_dropped = Counter(
            "gateway_records_dropped",
            "Request rows dropped because too many waited for SQL (buffer full).",
            registry=r,
        )
        self.records_errors = Counter(
            "gateway_records_errors", "Failed SQL operations.", ("operation",), registry=r
        )

    def _declare_limits(self, r: CollectorRegistry) -> None:
        self.limits_fail_open = Counter(
            "gateway_limits_fail_open",
            "Requests admitted without a rate-limit check (Redis unavailable).",
            registry=r,
        )
        self.limit_writes_dropped = Counter(
            "gateway_limit_writes_dropped",
            "Settlements dropped because too many waited for Redis.",
            registry=r,
        )
        self.key_labels = Gauge(
            "gateway_key_labels",
            "1 per label of a gateway key (join on `key` with gateway_key_cost_usd).",
            ("key", "label", "value"),
            registry=r,
            multiprocess_mode="max",
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason, "none")

    def _declare_budgets(self, r: CollectorRegistry) -> None:
        """Per-key budgets, set from memory off the request path (`set_key_budgets`).
        Every worker reads the same ledger, so the merged view takes the maximum over
        live workers."""
        self.key_budget = Gauge(
            "gateway_key_budget_usd",
            "Budget of a gateway key per period (day, month or total), in USD.",
            ("key", "period"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.key_budget_spent = Gauge(
            "gateway_key_budget_spent_usd",
            "USD a gateway key spent in its current budget period, per the spend ledger.",
            ("key", "period"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.route_deployment = Gauge(
            "gateway_route_deployment_info",
            "1 per deployment of a route (config): join with the per-deployment series.",
            ("route", "deployment"),
            registry=r,
            multiprocess_mode="max",
        )

    def initialise(
        self,
        deployments: Iterable[tuple[str, str, Iterable[str]]],
        keys: Iterable[tuple[str, str]] = (),
        redis: bool = False,
    ) -> None:
        """Known label sets start at zero so dashboards show lines before traffic.

        `deployments` are (id, provider, its routes), `keys` (name, team) pairs;
        `redis`: Redis is configured (its error counters start at zero).
        """
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)
        if redis:
            for operation in REDIS_OPERATIONS:
                self.redis_errors.labels(operation)
        for deployment_id, provider, routes in deployments:
            self._provider_of[deployment_id] = provider
            self.cooldown_until.labels(deployment_id).set(0)
            for route in routes:
                self.route_deployment.labels(route, deployment_id).set(1)
                for kind in TOKEN_KINDS:
                    self.tokens.labels(provider, deployment_id, route, kind)
                self.cost.labels(provider, deployment_id, route)
            self.usage_estimated.labels(provider, deployment_id)
            self.retries.labels(deployment_id)
            self.upstream_requests.labels(provider, deployment_id, "ok")
        for key, team in keys:
            self.key_cost.labels(*self._key_pair(key, team))

    @property
    def multiprocess(self) -> bool:
        return self._multiproc_dir is not None

    def render(self) -> bytes:
        """The exposition text, after this process's pending sums (on the loop's thread)."""
        self.flush()
        return self.render_flushed()

    def render_flushed(self) -> bytes:
        """The exposition text as last flushed (any thread)."""
        if self._multiproc_dir:
            return render_multiprocess(self._multiproc_dir)
        return generate_latest(self.registry)

    def flush(self) -> None:
        for endpoint, count in self.in_flight_now.items():
            self._in_flight_children[endpoint].set(count)
        for refresh in self._refreshers:
            try:
                refresh()
            except Exception:  # a bug: logged once, and the sums still go out
                if refresh not in self._broken:
                    self._broken.append(refresh)
                    log.exception("metrics: refresh failed")
        self.pending.flush()

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        """`refresh` runs at every flush: before each scrape this process serves, and
        once a second in the background (what other workers' scrapes read)."""
        self._refreshers.append(refresh)

    def start(self) -> None:
        self.pending.start(self.flush)

    async def stop(self) -> None:
        """The last sums applied (a worker's files outlive it in multiprocess mode)."""
        await self.pending.stop()
        self.flush()

    def close(self) -> None:
        """A worker that stops takes its live gauges (in-flight) out of the merged view."""
        if self._multiproc_dir:
            prom_multiprocess.mark_process_dead(os.getpid(), self._multiproc_dir)  # type: ignore[no-untyped-call]  # untyped lib

    def cache_result(self, result: str) -> PendingCount:
        return self.pending.count(self.cache_requests.labels(result))

    def record_cooldown(self, deployment_id: str, until_s: float) -> None:
        self.cooldown_until.labels(deployment_id).set(until_s)

    def refresh_cooldowns(self, cooldowns: Iterable[tuple[str, float]]) -> None:
        """Cooldowns learnt from other replicas (stats sync) show up at the next scrape."""
        for deployment_id, until_s in cooldowns:
            if until_s:
                self.record_cooldown(deployment_id, until_s)

    def record_request(self, ctx: RequestContext) -> None:
        # The deployment that answered; when none did, the last one tried (its failure
        # is the one the client got); "none" when none was tried (refused, unknown
        # route, or failed before routing).
        deployment = ctx.deployment_id or ctx.attempt_deployment_id
        key = (
            ctx.endpoint,
            ctx.route or "unknown",
            deployment or "none",
            ctx.provider or self._provider_of.get(deployment or "", "none"),
            ctx.status // 100,
            ctx.cache,
            ctx.stream,
        )
        series = self._request_series.get(key) or self._new_request_series(key)
        series.count.amount += 1
        elapsed_s = ctx.elapsed_s()
        series.duration.observe(elapsed_s)
        if ctx.upstream_s is not None and not ctx.stream:
            series.overhead.observe(max(0.0, elapsed_s - ctx.upstream_s))

    def _new_request_series(self, key: tuple[Any, ...]) -> _RequestSeries:
        endpoint, route, deployment, provider, status, cache, stream = key
        labels = (endpoint, route, deployment, provider, f"{status}xx", (cache or "off").lower())
        series = _RequestSeries(
            self.pending.count(self._child(self.requests, *labels)),
            self._histogram(self.request_duration, endpoint, route, "true" if stream else "false"),
            self._histogram(self.overhead, endpoint),
        )
        self._request_series[key] = series
        return series

    def record_attempt(
        self, provider: str, deployment: str, outcome: str, duration_s: float, stream: bool = False
    ) -> None:
        key = (provider, deployment, outcome, stream)
        series = self._attempt_series.get(key)
        if series is None:
            attempts = self._child(self.upstream_requests, provider, deployment, outcome)
            streamed = "true" if stream else "false"
            series = self._attempt_series[key] = _AttemptSeries(
                self.pending.count(attempts),
                self._histogram(self.upstream_duration, provider, deployment, streamed),
            )
        series.count.amount += 1
        if outcome == "ok":
            series.duration.observe(duration_s)

    def record_usage(self, ctx: RequestContext, key_label: str, team_label: str) -> None:
        provider, deployment = ctx.provider or "none", ctx.deployment_id or "none"
        route = ctx.route or "unknown"
        series = self._usage_series.get((provider, deployment, route))
        if series is None:
            series = self._new_usage_series(provider, deployment, route)
        usage = ctx.usage
        if usage is not None:
            tokens = series.tokens
            tokens[0].amount += usage.prompt_tokens
            tokens[1].amount += usage.completion_tokens
            tokens[2].amount += usage.cached_tokens
            tokens[3].amount += usage.cache_write_tokens
            tokens[4].amount += usage.reasoning_tokens
            if usage.estimated:
                series.estimated.amount += 1
        if ctx.cost_usd:
            series.cost.amount += ctx.cost_usd
            self._key_cost(key_label, team_label).amount += ctx.cost_usd
        if ctx.ttft_s is not None and ctx.stream:
            series.ttft.observe(ctx.ttft_s)

    def _new_usage_series(self, provider: str, deployment: str, route: str) -> _UsageSeries:
        series = _UsageSeries(
            tuple(
                self.pending.count(self._child(self.tokens, provider, deployment, route, kind))
                for kind in TOKEN_KINDS
            ),
            self.pending.count(self._child(self.usage_estimated, provider, deployment)),
            self.pending.count(self._child(self.cost, provider, deployment, route)),
            self._histogram(self.ttft, provider, deployment),
        )
        self._usage_series[(provider, deployment, route)] = series
        return series

    def _key_cost(self, key: str, team: str) -> PendingCount:
        pending = self._key_costs.get((key, team))
        if pending is None:
            pending = self.pending.count(self._child(self.key_cost, *self._key_pair(key, team)))
            if len(self._key_costs) < MAX_KEY_LABELS:  # past it, a lookup each time
                self._key_costs[(key, team)] = pending
        return pending

    def record_rejection(self, reason: str, key: str = "none", team: str = "none") -> None:
        """A request refused (`reason`); `key`/`team` of the caller when known."""
        label = self._key_pair(key, team)[0]
        self.pending.count(self._child(self.rejections, reason, label)).amount += 1

    def set_key_budgets(self, budgets: Iterable[tuple[str, str, str, float, float | None]]) -> None:
        """(key name, team, period kind, budget USD, spent USD or None: unknown) of every
        key with a budget now; series of keys no longer listed go. Off the request path:
        called by a refresher, with values kept in memory."""
        seen = set()
        for name, team, period, budget_usd, spent_usd in budgets:
            key, _ = self._key_pair(name, team)
            if key == "other":
                continue  # past the key cap: a budget of many keys means nothing
            labels = (key, period)
            seen.add(labels)
            if self._budgets.get(labels) == (budget_usd, spent_usd):
                continue
            self._budgets[labels] = (budget_usd, spent_usd)
            self.key_budget.labels(*labels).set(budget_usd)
            if spent_usd is not None:
                self.key_budget_spent.labels(*labels).set(spent_usd)
        for labels in [labels for labels in self._budgets if labels not in seen]:
            _, spent_usd = self._budgets.pop(labels)
            self._drop(self.key_budget, labels)
            if spent_usd is not None:
                self._drop(self.key_budget_spent, labels)

    def _drop(self, gauge: Gauge, labels: tuple[str, ...]) -> None:
        """A series that must go: removed, or with several workers (whose files keep
        every series) NaN, which no comparison or alert matches."""
        if self.multiprocess:
            gauge.labels(*labels).set(math.nan)
        else:
            gauge.remove(*labels)

    def _histogram(self, metric: Histogram, *values: str) -> PendingHistogram:
        return self.pending.histogram(self._child(metric, *values))

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: label lookups are a hot-path cost and
        every label value here comes from a bounded set (config, enums, capped keys)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _key_pair(self, key: str, team: str) -> tuple[str, str]:
        """(key, team) label values, capped: past MAX_KEY_LABELS pairs the key is
        "other"; past MAX_TEAM_LABELS teams, the team too."""
        pair = (key, team)
        if pair in self._key_pairs:
            return pair
        if team not in self._teams:
            if len(self._teams) >= MAX_TEAM_LABELS:
                team = "other"
            else:
                self._teams.add(team)
        if len(self._key_pairs) >= MAX_KEY_LABELS:
            return ("other", team)
        pair = (key, team)
        self._key_pairs.add(pair)
        return pair


class _RequestSeries:
    __slots__ = ("count", "duration", "overhead")

    def __init__(
        self, count: PendingCount, duration: PendingHistogram, overhead: PendingHistogram
    ) -> None:
        self.count, self.duration, self.overhead = count, duration, overhead


class _AttemptSeries:
    __slots__ = ("count", "duration")

    def __init__(self, count: PendingCount, duration: PendingHistogram) -> None:
        self.count, self.duration = count, duration


class _UsageSeries:
    """One deployment's spend; `tokens` in TOKEN_KINDS order."""

    __slots__ = ("tokens", "estimated", "cost", "ttft")

    def __init__(
        self,
        tokens: tuple[PendingCount, ...],
        estimated: PendingCount,
        cost: PendingCount,
        ttft: PendingHistogram,
    ) -> None:
        self.tokens, self.estimated, self.cost, self.ttft = tokens, estimated, cost, ttft
