"""Builders and hypothesis strategies shared by the router tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from routers import Candidate, LiveStats, Plan, RouteRequest

ALL_CAPS = frozenset({"tools", "vision", "json_schema", "stream", "embeddings"})
PROVIDERS = ("openai", "anthropic", "local")
POLICY_NAMES = ("cheapest", "best_score", "lowest_latency", "least_busy", "weighted", "fallback")


def cand(deployment_id: str, **kw: Any) -> Candidate:
    """A cheap, capable, unconstrained candidate unless overridden."""
    stats_kw = {k: kw.pop(k) for k in list(kw) if k in LiveStats.__dataclass_fields__}
    defaults: dict[str, Any] = {
        "provider": "openai",
        "input_price_per_mtok_usd": 1.0,
        "output_price_per_mtok_usd": 2.0,
        "context_window_tokens": 8192,
        "max_output_tokens": None,
        "capabilities": ALL_CAPS,
    }
    defaults.update(kw)
    return Candidate(deployment_id=deployment_id, stats=LiveStats(**stats_kw), **defaults)


def ids(plan: Plan) -> list[str]:
    """Deployment ids in plan order."""
    return [r.candidate.deployment_id for r in plan.ordered]


def rejected(plan: Plan) -> dict[str, str]:
    """deployment_id -> rejection reason."""
    return {r.candidate.deployment_id: r.reason for r in plan.rejected}


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Strategy that is None a fair share of the time."""
    return st.none() | strategy


price = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)

stats_strategy = st.builds(
    LiveStats,
    ttft_ewma_s=maybe(st.floats(min_value=0.0, max_value=5.0)),
    per_token_ewma_s=maybe(st.floats(min_value=0.0, max_value=0.1)),
    error_rate=st.floats(min_value=0.0, max_value=1.0),
    in_flight=st.integers(min_value=0, max_value=20),
    cooldown_until=st.sampled_from([0.0, 50.0, 150.0]),
    remaining_rpm=maybe(st.integers(min_value=0, max_value=5)),
    remaining_tpm=maybe(st.integers(min_value=0, max_value=20_000)),
)


@st.composite
def candidate_lists(draw: st.DrawFn, max_size: int = 7) -> list[Candidate]:
    """Candidates with unique ids and varied prices, limits and stats."""
    n = draw(st.integers(min_value=0, max_value=max_size))
    return [
        Candidate(
            deployment_id=f"d{i}",
            provider=draw(st.sampled_from(PROVIDERS)),
            input_price_per_mtok_usd=draw(price),
            output_price_per_mtok_usd=draw(price),
            context_window_tokens=draw(st.sampled_from([2048, 8192, 128_000])),
            max_output_tokens=draw(maybe(st.sampled_from([512, 4096]))),
            capabilities=frozenset(draw(st.sets(st.sampled_from(sorted(ALL_CAPS))))),
            quality_score=draw(st.floats(min_value=0.0, max_value=1.0)),
            quality_by_tag=draw(st.dictionaries(st.just("code"), st.floats(0.0, 1.0))),
            weight=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
            stats=draw(stats_strategy),
        )
        for i in range(n)
    ]


requests_strategy = st.builds(
    RouteRequest,
    estimated_input_tokens=st.integers(min_value=0, max_value=10_000),
    max_output_tokens=maybe(st.integers(min_value=1, max_value=5000)),
    required_capabilities=st.frozensets(st.sampled_from(sorted(ALL_CAPS)), max_size=2),
    max_cost_usd=maybe(st.floats(min_value=0.0, max_value=1.0)),
    allowed_providers=maybe(st.frozensets(st.sampled_from(PROVIDERS), min_size=1)),
    excluded_providers=st.frozensets(st.sampled_from(PROVIDERS), max_size=1),
    task_tag=maybe(st.just("code")),
    now=st.just(100.0),
)


def no_exploration(name: str) -> Mapping[str, object]:
    """Params that make a policy deterministic regardless of rng."""
    return {"exploration": 0.0} if name == "lowest_latency" else {}
