"""The request pipeline: plan -> attempts (the only fallback loop) -> accounting.

for each deployment in plan.ordered (bounded by max_attempts and the deadline):
    attempt it; a connection error, or a short 429 on the last candidate, may be
    retried in place (retry budget permitting);
    success -> record stats and cost -> return;
    a non-retryable error (the upstream's own 4xx about the request) -> raise it;
    otherwise record the failure (maybe cooling the deployment down) and go on.
nothing left -> AllProvidersFailedError with every attempt's error.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.config import Catalog, Deployment, GatewayConfig, Route
from gateway.context import RequestContext
from gateway.errors import (
    AllProvidersFailedError,
    DeploymentsProbingError,
    GatewayError,
    NoEligibleDeploymentError,
    ProviderError,
    StreamTimeoutError,
    UnservableRequestError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.keys import Caller
from gateway.limits import Limits, Reservation
from gateway.pipeline import attempt as attempts
from gateway.pipeline.accounting import Accountant
from gateway.pipeline.relay import ChatStream
from gateway.providers import Provider
from gateway.routing import (
    FailureRecorder,
    Planner,
    RetryBudget,
    RoutingControls,
    StatsStore,
    route_request,
)
from gateway.telemetry import Metrics
from gateway.transport import Upstream
from gateway.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    NativeBody,
)
from routers import Plan


@dataclass(frozen=True, slots=True)
class PipelineParts:
    """What the fallback loop, its accounting and its committed streams use."""

    config: GatewayConfig  # server.request_timeout_s, routing
    catalog: Catalog
    providers: dict[str, Provider]
    upstream: Upstream
    planner: Planner
    stats: StatsStore
    retry_budget: RetryBudget
    metrics: Metrics
    limits: Limits


T = TypeVar("T")
# One try on one deployment; its float is what is left of the request's deadline, in
# seconds, which the attempt must keep (the transports' own timers do, for calls).
Attempt = Callable[[Deployment, Provider, float], Awaitable[T]]


class Pipeline:
    def __init__(self, parts: PipelineParts) -> None:
        self.s = parts
        self.accountant = Accountant(parts.metrics, parts.limits)
        routing = parts.config.routing
        auth_cooldown_s = routing.cooldown_s if routing.cooldown_failures else None
        self.failures = FailureRecorder(
            parts.stats, parts.metrics, auth_cooldown_s, routing.cooldown_on_retry_after
        )

    def plan_chat(self, req: ChatRequest, route: Route, controls: RoutingControls) -> Plan:
        request = route_request(
            req.prompt_chars(), req.max_tokens, req.required_capabilities(), controls
        )
        return self.s.planner.plan(route, request, controls.policy)

    async def chat(
        self,
        req: ChatRequest,
        route: Route,
        plan: Plan,
        caller: Caller,
        reservation: Reservation | None,
        ctx: RequestContext,
    ) -> ChatResponse:
        once = functools.partial(attempts.chat_once, self.s.upstream, req)
        response = await self.run_plan(ctx, route, plan, once, req.native)
        usage = response.usage
        if usage is None:  # the upstream sent none: estimated from the text
            usage = self.accountant.usage_or_estimate(
                None, req.prompt_chars(), _completion_chars(response)
            )
        d = self.s.catalog.deployments[ctx.deployment_id or ""]
        self.s.stats.success(
            d.id, ctx.upstream_s or 0.0, usage.completion_tokens, ctx.upstream_s or 0.0
        )
        await self.accountant.settle(ctx, caller, d, usage, reservation)
        return response

    async def chat_stream(
        self,
        req: ChatRequest,
        route: Route,
        plan: Plan,
        caller: Caller,
        reservation: Reservation | None,
        ctx: RequestContext,
    ) -> ChatStream:
        upstream = self.s.upstream
        # The whole stream's deadline (server.stream_timeout_s), from the request's start.
        stream_deadline = ctx.started + self.s.config.server.stream_timeout_s

        async def once(d: Deployment, provider: Provider, within_s: float) -> attempts.OpenedStream:
            # Until its first content arrives, over several reads: a timeout of its own.
            opening = attempts.open_stream(upstream, provider, req, d, stream_deadline)
            left_s = stream_deadline - time.perf_counter()
            if left_s < within_s:  # the stream's own limit comes first: no other can help
                return await _within(left_s, opening, StreamTimeoutError)
            return await _within(within_s, opening)

        opened = await self.run_plan(ctx, route, plan, once, req.native)
        d = self.s.catalog.deployments[ctx.deployment_id or ""]
        ctx.ttft_s = opened.first_content_at - ctx.started
        return ChatStream(
            opened, req, d, caller, reservation, ctx, self.s.stats, self.failures, self.accountant
        )

    async def embeddings(
        self,
        req: EmbeddingRequest,
        route: Route,
        plan: Plan,
        caller: Caller,
        reservation: Reservation | None,
        ctx: RequestContext,
    ) -> EmbeddingResponse:
        once = functools.partial(attempts.embeddings_once, self.s.upstream, req)
        response = await self.run_plan(ctx, route, plan, once)
        chars = sum(len(str(i)) for i in req.inputs)
        usage = self.accountant.usage_or_estimate(response.usage, chars, 0)
        d = self.s.catalog.deployments[ctx.deployment_id or ""]
        await self.accountant.settle(ctx, caller, d, usage, reservation)
        return response

    async def bill_abandoned(
        self,
        prompt_chars: int,
        caller: Caller,
        reservation: Reservation | None,
        ctx: RequestContext,
    ) -> None:
        """The client left mid-attempt: the prompt was still sent, so it is still billed."""
        if ctx.attempt_deployment_id is None:
            await self.s.limits.release(reservation)
            return
        d = self.s.catalog.deployments[ctx.attempt_deployment_id]
        ctx.deployment_id, ctx.provider, ctx.model = d.id, d.provider, d.model
        ctx.stream_outcome = "client_disconnect"
        usage = self.accountant.usage_or_estimate(None, prompt_chars, 0)
        await self.accountant.settle(ctx, caller, d, usage, reservation)

    async def run_plan(
        self,
        ctx: RequestContext,
        route: Route,
        plan: Plan,
        attempt: Attempt[T],
        native: NativeBody | None = None,
    ) -> T:
        if not plan.ordered:
            raise no_candidate_error(route, plan, native)
        budget, stats = self.s.retry_budget, self.s.stats
        budget.request_started()
        errors: list[ProviderError] = []
        deadline = ctx.started + self.s.config.server.request_timeout_s
        last = len(plan.ordered) - 1
        tried = 0  # deployments attempted
        try:
            for index, ranked in enumerate(plan.ordered):
                if ctx.attempts >= self.s.config.routing.max_attempts:
                    break
                d = self.s.catalog.deployments[ranked.candidate.deployment_id]
                probe = stats.try_probe(d.id)
                if probe is False:
                    continue  # half-open, its probes in flight: the next candidate serves
                # The first move to another deployment is free (it is what a gateway is
                # for); from the second on, moves take from the retry budget, so that an
                # outage of every candidate does not multiply the load.
                budgeted = tried >= 2
                if budgeted and not budget.try_acquire():
                    if probe:
                        stats.end_probe(d.id)
                    break
                tried += 1
                try:
                    return await self._attempt(ctx, d, attempt, deadline, index == last)
                except ProviderError as error:
                    error.deployment_id = d.id
                    errors.append(error)
                    if ctx.failed_attempts is None:
                        ctx.failed_attempts = []
                    ctx.failed_attempts.append(f"{d.id}: {error.outcome}")
                    if not error.retryable:
                        raise
                    if index < last:
                        ctx.fallbacks += 1
                        self.s.metrics.fallbacks.labels(route.name, error.outcome).inc()
                finally:
                    if budgeted:
                        budget.release()
                    if probe:
                        stats.end_probe(d.id)
            if not errors:
                raise DeploymentsProbingError(
                    f"Every deployment of '{route.name}' is recovering from a cooldown, its "
                    "probe in flight; try again shortly."
                )
            raise AllProvidersFailedError(errors)
        finally:
            budget.request_ended()

    async def _attempt(
        self,
        ctx: RequestContext,
        d: Deployment,
        attempt: Attempt[T],
        deadline: float,
        is_last: bool,
    ) -> T:
        provider, stats = self.s.providers[d.provider], self.s.stats
        retries = 0
        while True:
            ctx.attempts += 1
            ctx.attempt_deployment_id = d.id
            started = time.perf_counter()
            try:
                if deadline <= started:
                    raise UpstreamTimeoutError("The request deadline passed before this attempt.")
                stats.started(d.id)  # the in-flight count least_busy ranks by
                try:
                    result = await attempt(d, provider, deadline - started)
                finally:
                    stats.ended(d.id)
            except ProviderError as error:
                self.failures.record(d, error, time.perf_counter() - started)
                if not self._retry_in_place(error, is_last, retries):
                    raise
                retries += 1
                ctx.retries += 1
                self.s.metrics.retries.labels(d.id).inc()
                await asyncio.sleep(min(error.retry_after_s or 0.0, max(0.0, deadline - started)))
                continue
            ctx.upstream_s = time.perf_counter() - started
            ctx.deployment_id, ctx.provider, ctx.model = d.id, d.provider, d.model
            self.s.limits.deployment_used(d.id, 0)
            self.s.metrics.record_attempt(d.provider, d.id, "ok", ctx.upstream_s, ctx.stream)
            return result

    def _retry_in_place(self, error: ProviderError, is_last: bool, retries: int) -> bool:
        routing = self.s.config.routing
        if retries >= routing.same_deployment_retries:
            return False
        connection_error = isinstance(error, UpstreamUnavailableError) and error.during_connect
        short_429 = (
            isinstance(error, UpstreamRateLimitedError)
            and is_last
            and error.retry_after_s is not None
            and error.retry_after_s <= routing.max_retry_after_s
        )
        if not (connection_error or short_429):
            return False
        if not self.s.retry_budget.try_acquire():
            return False
        self.s.retry_budget.release()  # a retry in place holds no concurrent slot after this
        return True


def _request_timed_out() -> UpstreamTimeoutError:
    return UpstreamTimeoutError("The request deadline passed during the attempt.")


async def _within(
    remaining_s: float,
    work: Awaitable[T],
    timed_out: Callable[[], UpstreamTimeoutError] = _request_timed_out,
) -> T:
    try:
        async with asyncio.timeout(remaining_s):
            return await work
    except TimeoutError:
        raise timed_out() from None


def _completion_chars(response: ChatResponse) -> int:
    total = 0
    for choice in response.body.get("choices") or ():
        message = choice.get("message") or {}
        content = message.get("content")
        total += len(content) if isinstance(content, str) else 0
    return total


def _why_empty(route: Route, plan: Plan) -> str:
    reasons = "; ".join(f"{r.candidate.deployment_id}: {r.detail}" for r in plan.rejected)
    return (
        f"No deployment of '{route.name}' can serve this request ({reasons or 'none configured'})."
    )


# Exclusions the client can change (what it asks, or the controls it sends): when these
# alone leave no candidate, the answer is a 400 naming what to change, not a retryable 503.
_CLIENT_REASONS: dict[str, tuple[str, str]] = {  # reason -> (param, code)
    "context_window": ("messages", "context_length_exceeded"),
    "capability": ("messages", "unsupported_capability"),
    "unsupported_parameter": ("model", "unsupported_parameter"),
    "provider_not_allowed": ("x-gateway-providers", "no_eligible_deployment"),
    "provider_excluded": ("x-gateway-exclude-providers", "no_eligible_deployment"),
    "max_cost": ("x-gateway-max-cost-usd", "no_eligible_deployment"),
}


def no_candidate_error(route: Route, plan: Plan, native: NativeBody | None = None) -> GatewayError:
    """Why an empty plan is empty: a 400 when every exclusion is the request's own doing,
    else a 503 (cooling down or over quota: could serve, but not now). `native`: the
    request's native body, when its dialect gave it one (what only it needs is named)."""
    message = _why_empty(route, plan)
    if not plan.rejected or any(r.reason not in _CLIENT_REASONS for r in plan.rejected):
        return NoEligibleDeploymentError(message)
    first = plan.rejected[0]
    param, code = _CLIENT_REASONS[first.reason]
    if first.reason == "capability" and native is not None and native.requires_param:
        needs = ", ".join(sorted(native.requires))
        message += f" '{native.requires_param}' is served only by deployments with {needs}."
        return UnservableRequestError(message, native.requires_param, code)
    if first.reason == "context_window" and first.detail.startswith("max_tokens"):
        param = "max_tokens"
    elif first.reason == "unsupported_parameter":  # "unsupported parameter: logprobs, n"
        param = first.detail.split(": ", 1)[1].split(", ")[0]
    return UnservableRequestError(message, param, code)
