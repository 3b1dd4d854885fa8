"""From a request and its route to a routing `Plan`: the pure policies do the ranking."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from gateway.config import Deployment, Route, estimate_tokens
from gateway.errors import InvalidRequestError
from gateway.routing.stats import StatsStore
from routers import (
    Candidate,
    LiveStats,
    Plan,
    Policy,
    PolicyConfigError,
    RouteRequest,
    build_policy,
)


@dataclass(frozen=True, slots=True)
class RoutingControls:
    """Per-request routing controls (the `x-gateway-*` headers, read in gateway.api)."""

    policy: str | None = None
    max_cost_usd: float | None = None
    allowed_providers: frozenset[str] | None = None
    excluded_providers: frozenset[str] = frozenset()
    task_tag: str | None = None


DEFAULT_ROUTING = RoutingControls()


# Candidate's fields up to `stats`: id, provider, input and output price, context
# window, output limit, capabilities, quality, quality by tag, weight.
_FixedFields = tuple[
    str, str, float, float, int, int | None, frozenset[str], float, Mapping[str, float], float
]


def _fixed_fields(d: Deployment) -> _FixedFields:
    """What a candidate holds of its deployment, in `Candidate`'s field order up to
    `stats`: built once per deployment, since the planner makes candidates per request."""
    return (
        d.id,
        d.provider,
        d.prices.input_per_mtok_usd,
        d.prices.output_per_mtok_usd,
        d.context_window_tokens,
        d.max_output_tokens,
        d.capabilities,
        d.quality,
        d.quality_by_tag,
        d.weight,
    )


def route_request(
    input_chars: int, max_tokens: int | None, needs: frozenset[str], controls: RoutingControls
) -> RouteRequest:
    return RouteRequest(
        estimated_input_tokens=estimate_tokens(input_chars),
        max_output_tokens=max_tokens,
        required_capabilities=needs,
        max_cost_usd=controls.max_cost_usd,
        allowed_providers=controls.allowed_providers,
        excluded_providers=controls.excluded_providers,
        task_tag=controls.task_tag,
        now=time.time(),
    )


class Planner:
    """Holds one policy instance per route (built once) and makes plans."""

    def __init__(
        self,
        routes: dict[str, Route],
        deployments: dict[str, Deployment],
        stats: StatsStore,
        headroom: Callable[[str], tuple[int | None, int | None]] = lambda _: (None, None),
    ) -> None:
        self._stats = stats
        self._headroom = headroom
        # Only a deployment with an rpm or tpm quota has headroom to ask for.
        self._limited = frozenset(i for i, d in deployments.items() if d.has_quota)
        self._fixed = {i: _fixed_fields(d) for i, d in deployments.items()}
        # The last Candidate of each deployment: reused while its LiveStats object is the
        # same (a frozen dataclass of 11 fields costs more to build than the whole check).
        self._candidates: dict[str, Candidate] = {}
        self._policies: dict[str, Policy] = {
            name: build_policy(route.policy, route.params) for name, route in routes.items()
        }

    def plan(self, route: Route, request: RouteRequest, override: str | None = None) -> Plan:
        policy = self._policies[route.name]
        if override and override != route.policy:
            policy = _override_policy(override)
        candidates = [self._candidate(i) for i in route.deployment_ids]
        plan = policy.plan(request, candidates)
        if not plan.ordered and any(r.reason == "cooldown" for r in plan.rejected):
            # Panic mode (Envoy's panic threshold): when the deployments excluded only by
            # their cooldown are all that is left, trying them beats failing every
            # request until one recovers (the others stay excluded for their reasons).
            plan = policy.plan(replace(request, now=math.inf), candidates)
            plan = replace(
                plan,
                reasons=(
                    *plan.reasons,
                    "all deployments cooling down: trying them anyway (panic mode)",
                ),
            )
        return plan

    def _candidate(self, deployment_id: str) -> Candidate:
        live = self._stats.snapshot(deployment_id)
        if deployment_id in self._limited:
            live = self._with_headroom(deployment_id, live)
        last = self._candidates.get(deployment_id)
        if last is not None and last.stats is live:
            return last
        candidate = self._candidates[deployment_id] = Candidate(*self._fixed[deployment_id], live)
        return candidate

    def _with_headroom(self, deployment_id: str, stats: LiveStats) -> LiveStats:
        rpm, tpm = self._headroom(deployment_id)
        if rpm is None and tpm is None:
            return stats
        return replace(stats, remaining_rpm=rpm, remaining_tpm=tpm)


def _override_policy(name: str) -> Policy:
    try:
        return build_policy(name, {})
    except PolicyConfigError as exc:
        raise InvalidRequestError(str(exc), param="x-gateway-policy") from None
