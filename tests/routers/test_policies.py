"""Table tests: each policy's order and rejections on hand-built scenarios."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from routers import Candidate, RouteRequest, build_policy
from tests.routers.helpers import cand, ids, rejected

REQ = RouteRequest(estimated_input_tokens=1000, now=100.0)
FAST = {"ttft_ewma_s": 0.1, "per_token_ewma_s": 0.001}
SLOW = {"ttft_ewma_s": 1.0, "per_token_ewma_s": 0.01}
MID = {"ttft_ewma_s": 0.3, "per_token_ewma_s": 0.001}


def price(p: float) -> dict[str, float]:
    """Same price for input and output, to keep cost arithmetic obvious."""
    return {"input_price_per_mtok_usd": p, "output_price_per_mtok_usd": p}


Case = tuple[
    str, Mapping[str, object], RouteRequest, Sequence[Candidate], list[str], dict[str, str]
]

CASES: list[Case] = [
    ("cheapest/ascending_cost", {}, REQ,
     [cand("a", **price(3)), cand("b", **price(1)), cand("c", **price(2))], ["b", "c", "a"], {}),
    ("cheapest/tie_known_latency_first", {}, REQ,
     [cand("a"), cand("b", **SLOW), cand("c", **FAST)], ["c", "b", "a"], {}),
    ("cheapest/tie_input_order", {}, REQ, [cand("a"), cand("b")], ["a", "b"], {}),
    ("cheapest/expected_output_param", {"expected_output_tokens": 10_000}, REQ,
     [cand("a", input_price_per_mtok_usd=1, output_price_per_mtok_usd=9),
      cand("b", input_price_per_mtok_usd=5, output_price_per_mtok_usd=2)], ["b", "a"], {}),
    ("cheapest/rejects", {}, RouteRequest(estimated_input_tokens=1000, now=100.0,
                                          max_cost_usd=0.01),
     [cand("a", **price(100)), cand("b", cooldown_until=200.0), cand("c")], ["c"],
     {"a": "max_cost", "b": "cooldown"}),
    ("best_score/quality_dominates", {}, REQ,
     [cand("a", quality_score=0.2), cand("b", quality_score=0.9)], ["b", "a"], {}),
    ("best_score/cost_breaks_equal_quality", {}, REQ,
     [cand("a", **price(5)), cand("b", **price(1))], ["b", "a"], {}),
    ("best_score/task_tag_quality", {},
     RouteRequest(estimated_input_tokens=10, task_tag="code"),
     [cand("a", quality_score=0.9), cand("b", quality_score=0.1, quality_by_tag={"code": 1.0})],
     ["b", "a"], {}),
    ("best_score/cost_weight", {"weights": {"quality": 0.1, "cost": 1.0}}, REQ,
     [cand("a", quality_score=0.9, **price(10)), cand("b", quality_score=0.5, **price(1))],
     ["b", "a"], {}),
    ("best_score/unknown_latency_is_median", {"weights": {"quality": 0, "cost": 0, "latency": 1}},
     REQ, [cand("slow", **SLOW), cand("unknown"), cand("fast", **FAST)],
     ["fast", "unknown", "slow"], {}),
    ("best_score/param_rejections", {"min_quality": 0.5, "max_cost_usd": 0.01}, REQ,
     [cand("a", quality_score=0.4), cand("b", **price(100)), cand("c")], ["c"],
     {"a": "quality", "b": "max_cost"}),
    ("lowest_latency/unknown_first", {"exploration": 0}, REQ,
     [cand("slow", **SLOW), cand("fast", **FAST), cand("new")], ["new", "fast", "slow"], {}),
    ("lowest_latency/error_penalty", {"exploration": 0}, REQ,
     [cand("flaky", error_rate=0.9, **FAST), cand("steady", **MID)],
     ["steady", "flaky"], {}),
    ("lowest_latency/no_penalty", {"exploration": 0, "error_penalty": 0}, REQ,
     [cand("flaky", error_rate=0.9, **FAST), cand("steady", **MID)],
     ["flaky", "steady"], {}),
    ("least_busy/ascending_in_flight", {}, REQ,
     [cand("a", in_flight=3), cand("b", in_flight=0), cand("c", in_flight=1)], ["b", "c", "a"], {}),
    ("least_busy/tie_latency_then_order", {}, REQ,
     [cand("a", in_flight=1), cand("b", in_flight=1, **SLOW), cand("c", in_flight=1, **FAST),
      cand("d", in_flight=1)], ["c", "b", "a", "d"], {}),
    ("weighted/zero_weight_last", {}, REQ,
     [cand("z1", weight=0), cand("a"), cand("z2", weight=0)], ["a", "z1", "z2"], {}),
    ("weighted/override_weights", {"weights": {"a": 0, "b": 0}}, REQ,
     [cand("a"), cand("b"), cand("c", weight=0)], ["a", "b", "c"], {}),
    ("fallback/as_written", {}, REQ,
     [cand("c", **price(9)), cand("a", remaining_rpm=0),
      cand("b", **price(1))], ["c", "b"], {"a": "rate_limit"}),
    ("fallback/all_rejected", {}, RouteRequest(estimated_input_tokens=10**6), [cand("a")], [],
     {"a": "context_window"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "params", "req", "candidates", "expected_ids", "expected_rejected"),
    [(c[0].split("/")[0], *c[1:]) for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy_table(
    name: str,
    params: Mapping[str, object],
    req: RouteRequest,
    candidates: Sequence[Candidate],
    expected_ids: list[str],
    expected_rejected: dict[str, str],
) -> None:
    plan = build_policy(name, params, rng=random.Random(0)).plan(req, candidates)
    assert plan.policy == name
    assert ids(plan) == expected_ids
    assert rejected(plan) == expected_rejected


def test_lowest_latency_exploration_moves_one_to_front() -> None:
    cands = [cand("fast", **FAST), cand("mid", ttft_ewma_s=0.5, per_token_ewma_s=0.001),
             cand("slow", **SLOW)]  # fmt: skip
    policy = build_policy("lowest_latency", {"exploration": 1.0}, rng=random.Random(3))
    firsts = {ids(policy.plan(REQ, cands))[0] for _ in range(50)}
    assert firsts == {"fast", "mid", "slow"}
    plan = policy.plan(REQ, cands)
    assert any(r.startswith("exploration") for r in plan.reasons)
    assert sorted(ids(plan)) == ["fast", "mid", "slow"]


def test_scores_are_higher_is_better() -> None:
    plan = build_policy("cheapest").plan(REQ, [cand("a", **price(2)), cand("b", **price(1))])
    assert [r.score for r in plan.ordered] == sorted((r.score for r in plan.ordered), reverse=True)
    assert plan.ordered[0].breakdown["expected_cost_usd"] == pytest.approx(-plan.ordered[0].score)
