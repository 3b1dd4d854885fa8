"""From a request and its route to a routing `Plan`: the pure policies do the ranking."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from starlette.datastructures import Headers

from gateway.catalog import Deployment, Route
from gateway.errors import InvalidRequestError
from gateway.pricing import estimate_tokens
from gateway.stats import StatsStore
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
class RequestControls:
    """Per-request routing and cache controls, read from `x-gateway-*` headers."""

    policy: str | None = None
    max_cost_usd: float | None = None
    allowed_providers: frozenset[str] | None = None
    excluded_providers: frozenset[str] = frozenset()
    task_tag: str | None = None
    cache_read: bool = True
    cache_write: bool = True
    cache_ttl_s: int | None = None


DEFAULT_CONTROLS = RequestControls()


def controls_from_headers(raw: Sequence[tuple[bytes, bytes]]) -> RequestControls:
    """From a request's raw headers (ASGI's: lower-case names). Most requests send no
    control: one pass over the names, without decoding them or a lookup per control."""
    for name, _ in raw:
        if name.startswith(b"x-gateway-") or name == b"cache-control":
            break
    else:
        return DEFAULT_CONTROLS
    headers = Headers(raw=list(raw))
    cache_control = (headers.get("cache-control") or "").lower()
    return RequestControls(
        policy=headers.get("x-gateway-policy") or None,
        max_cost_usd=_float_header(headers, "x-gateway-max-cost-usd"),
        allowed_providers=_set_header(headers, "x-gateway-providers"),
        excluded_providers=_set_header(headers, "x-gateway-exclude-providers") or frozenset(),
        task_tag=headers.get("x-gateway-task") or None,
        cache_read="no-cache" not in cache_control and "no-store" not in cache_control,
        cache_write="no-store" not in cache_control,
        cache_ttl_s=_int_header(headers, "x-gateway-cache-ttl"),
    )


def _float_header(headers: Headers, name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequestError(f"Header {name} must be a number.", param=name) from None
    if number < 0:
        raise InvalidRequestError(f"Header {name} must not be negative.", param=name)
    return number


def _int_header(headers: Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidRequestError(f"Header {name} must be a whole number of seconds.", param=name)
    return int(value)


def _set_header(headers: Headers, name: str) -> frozenset[str] | None:
    value = headers.get(name)
    if not value:
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


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
    input_chars: int, max_tokens: int | None, needs: frozenset[str], controls: RequestControls
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
        if (
            not plan.ordered
            and plan.rejected
            and all(r.reason == "cooldown" for r in plan.rejected)
        ):
            # Panic mode (Envoy's panic threshold): when cooldown alone excludes every
            # deployment, trying them beats failing every request until one recovers.
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
