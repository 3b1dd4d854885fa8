"""Panic mode applies when the candidates excluded only by their cooldown are all that is
left, even when others are excluded for their own reasons (a context window)."""

from __future__ import annotations

import time

from gateway.config.catalog import Deployment, Route
from gateway.config.pricing import Prices
from gateway.routing.planning import DEFAULT_ROUTING, Planner, route_request
from gateway.routing.stats import StatsStore


def deployment(name: str, window: int) -> Deployment:
    return Deployment(
        id=f"p/{name}",
        name=name,
        provider="p",
        kind="openai",
        model=name,
        mode="chat",
        prices=Prices(input_per_mtok_usd=1.0, output_per_mtok_usd=1.0),
        context_window_tokens=window,
        max_output_tokens=None,
        capabilities=frozenset(),
    )


def test_cooling_candidates_are_tried_when_the_others_cannot_serve_anyway() -> None:
    # a, b, c cool down; d has too small a window for this request.
    deployments = {d.id: d for d in (deployment(n, 100_000) for n in "abc")}
    deployments["p/d"] = deployment("d", 100)
    route = Route("r", "fallback", tuple(deployments), {}, "chat")
    stats = StatsStore(cooldown_failures=1, cooldown_s=30)
    planner = Planner({"r": route}, deployments, stats)
    request = route_request(4000, 256, frozenset(), DEFAULT_ROUTING)  # 1,000 tokens: not d
    for name in "abc":
        stats.failure(f"p/{name}")
    assert all(stats.in_cooldown(f"p/{name}", time.time()) for name in "abc")
    plan = planner.plan(route, request)
    assert [r.candidate.deployment_id for r in plan.ordered] == ["p/a", "p/b", "p/c"]
    assert [r.candidate.deployment_id for r in plan.rejected] == ["p/d"]
    assert any("panic mode" in reason for reason in plan.reasons)


def test_no_panic_while_a_candidate_is_healthy() -> None:
    deployments = {d.id: d for d in (deployment(n, 100_000) for n in "ab")}
    route = Route("r", "fallback", tuple(deployments), {}, "chat")
    stats = StatsStore(cooldown_failures=1, cooldown_s=30)
    planner = Planner({"r": route}, deployments, stats)
    stats.failure("p/a")
    plan = planner.plan(route, route_request(40, 16, frozenset(), DEFAULT_ROUTING))
    assert [r.candidate.deployment_id for r in plan.ordered] == ["p/b"]
