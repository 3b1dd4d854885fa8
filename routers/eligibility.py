"""Hard constraints every policy applies before ranking.

Checks run in a fixed order and the first failure is recorded, so each ineligible candidate
appears exactly once in a plan's `rejected` with the most fundamental reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from routers.estimates import expected_cost_usd, expected_output_tokens
from routers.schema import PARAMETER_CAPABILITIES, Candidate, Rejection, RouteRequest


def _provider(request: RouteRequest, c: Candidate) -> tuple[str, str] | None:
    if request.allowed_providers is not None and c.provider not in request.allowed_providers:
        return "provider_not_allowed", f"provider {c.provider!r} not in allowed providers"
    if c.provider in request.excluded_providers:
        return "provider_excluded", f"provider {c.provider!r} is excluded"
    return None


def _missing_capabilities(request: RouteRequest, c: Candidate) -> tuple[str, str]:
    missing = sorted(request.required_capabilities - c.capabilities)
    features = [m for m in missing if m not in PARAMETER_CAPABILITIES]
    if features:
        return "capability", f"missing capabilities: {', '.join(features)}"
    return "unsupported_parameter", f"unsupported parameter: {', '.join(missing)}"


def _context(request: RouteRequest, c: Candidate) -> tuple[str, str] | None:
    needed = request.estimated_input_tokens + (request.max_output_tokens or 0)
    client_max, own_max = request.max_output_tokens, c.max_output_tokens
    if needed > c.context_window_tokens:
        window = c.context_window_tokens
        if client_max is not None and client_max >= window:
            return "context_window", f"max_tokens {client_max} exceeds window {window}"
        return "context_window", f"needs {needed} tokens, window {window}"
    if client_max is not None and own_max is not None and client_max > own_max:
        return "context_window", f"max_tokens {client_max} exceeds deployment max {own_max}"
    return None


def _cooling_down(request: RouteRequest, c: Candidate) -> tuple[str, str]:
    remaining = c.stats.cooldown_until - request.now
    return "cooldown", f"cooling down for another {remaining:.1f}s"


def _rate_limit(request: RouteRequest, c: Candidate, default_out: int) -> tuple[str, str] | None:
    if c.stats.remaining_rpm == 0:
        return "rate_limit", "no requests left this minute"
    tpm = c.stats.remaining_tpm
    if tpm is None:
        return None
    needed = request.estimated_input_tokens + expected_output_tokens(request, c, default_out)
    if tpm < needed:
        return "rate_limit", f"needs ~{needed} tokens, {tpm} left this minute"
    return None


def _cost(
    request: RouteRequest, c: Candidate, default_out: int, max_cost_usd: float
) -> tuple[str, str] | None:
    cost = expected_cost_usd(request, c, default_out)
    if cost > max_cost_usd:
        return "max_cost", f"expected ${cost:.6f} exceeds max ${max_cost_usd:.6f}"
    return None


def check(request: RouteRequest, candidate: Candidate, default_out: int) -> Rejection | None:
    """Return the first failed constraint for `candidate`, or None when it is eligible.

    Planning checks every candidate on every request, and most constraints are not in
    play (no provider filter, no cooldown, no quota, no cost ceiling): each check's
    helper runs only when a cheap test here says it may fail (for a missing
    capability or a cooldown, only to word the failure the test found).
    """
    stats = candidate.stats
    failure = None
    if request.allowed_providers is not None or request.excluded_providers:
        failure = _provider(request, candidate)
    if failure is None and not request.required_capabilities <= candidate.capabilities:
        failure = _missing_capabilities(request, candidate)
    if failure is None:
        failure = _context(request, candidate)
    if failure is None and stats.cooldown_until > request.now:
        failure = _cooling_down(request, candidate)
    if failure is None and (stats.remaining_rpm is not None or stats.remaining_tpm is not None):
        failure = _rate_limit(request, candidate, default_out)
    if failure is None and request.max_cost_usd is not None:
        failure = _cost(request, candidate, default_out, request.max_cost_usd)
    if failure is None:
        return None
    return Rejection(candidate=candidate, reason=failure[0], detail=failure[1])


def split(
    request: RouteRequest, candidates: Sequence[Candidate], default_out: int
) -> tuple[list[Candidate], list[Rejection]]:
    """Partition candidates into eligible (input order kept) and rejected."""
    eligible: list[Candidate] = []
    rejected: list[Rejection] = []
    for candidate in candidates:
        rejection = check(request, candidate, default_out)
        if rejection is None:
            eligible.append(candidate)
        else:
            rejected.append(rejection)
    return eligible, rejected
