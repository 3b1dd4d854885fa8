"""Property-based invariants over random candidates and requests."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from routers import Candidate, RouteRequest, build_policy
from routers.eligibility import check
from routers.estimates import expected_cost_usd, quality
from tests.routers.helpers import (
    POLICY_NAMES,
    cand,
    candidate_lists,
    ids,
    requests_strategy,
)

# database=None: keep the repo free of a .hypothesis/ example cache.
FAST = settings(max_examples=200, deadline=None, database=None)
policy_names = st.sampled_from(POLICY_NAMES)


@FAST
@given(policy_names, requests_strategy, candidate_lists(), st.integers(0, 2**32))
def test_partition(name: str, req: RouteRequest, cands: list[Candidate], seed: int) -> None:
    """Every candidate is either ordered or rejected, exactly once."""
    plan = build_policy(name, {}, rng=random.Random(seed)).plan(req, cands)
    ordered = ids(plan)
    rejected = [r.candidate.deployment_id for r in plan.rejected]
    assert not set(ordered) & set(rejected)
    assert sorted(ordered + rejected) == sorted(c.deployment_id for c in cands)


@FAST
@given(policy_names, requests_strategy, candidate_lists())
def test_empty_iff_all_ineligible(name: str, req: RouteRequest, cands: list[Candidate]) -> None:
    plan = build_policy(name, {}, rng=random.Random(0)).plan(req, cands)
    all_ineligible = all(check(req, c, 256) is not None for c in cands)
    assert (plan.ordered == ()) == all_ineligible


@FAST
@given(requests_strategy, candidate_lists())
def test_cheapest_first_is_minimum_cost(req: RouteRequest, cands: list[Candidate]) -> None:
    plan = build_policy("cheapest").plan(req, cands)
    if plan.ordered:
        costs = [expected_cost_usd(req, r.candidate, 256) for r in plan.ordered]
        assert costs[0] == min(costs)
        assert costs == sorted(costs)


@FAST
@given(
    requests_strategy,
    candidate_lists(),
    st.data(),
    st.sampled_from([{}, {"min_quality": 0.3}, {"weights": {"quality": 0.2, "latency": 2.0}}]),
)
def test_best_score_monotone_in_quality(
    req: RouteRequest, cands: list[Candidate], data: st.DataObject, params: dict[str, object]
) -> None:
    """Raising one eligible candidate's quality never worsens its position."""
    policy = build_policy("best_score", params)
    before = ids(policy.plan(req, cands))
    if not before:
        return
    target = data.draw(st.sampled_from(before))
    i = next(i for i, c in enumerate(cands) if c.deployment_id == target)
    old = quality(req, cands[i])
    new = data.draw(st.floats(min_value=old, max_value=1.0))
    if req.task_tag is not None and req.task_tag in cands[i].quality_by_tag:
        raised = replace(cands[i], quality_by_tag={req.task_tag: new})
    else:
        raised = replace(cands[i], quality_score=new)
    after = ids(policy.plan(req, [*cands[:i], raised, *cands[i + 1 :]]))
    assert after.index(target) <= before.index(target)


@FAST
@given(requests_strategy, candidate_lists(), st.integers(0, 2**32))
def test_weighted_is_deterministic_given_seed(
    req: RouteRequest, cands: list[Candidate], seed: int
) -> None:
    first = build_policy("weighted", rng=random.Random(seed)).plan(req, cands)
    second = build_policy("weighted", rng=random.Random(seed)).plan(req, cands)
    assert first == second


@FAST
@given(requests_strategy, candidate_lists(), st.integers(0, 2**32))
def test_weighted_zero_weight_never_first_when_others_exist(
    req: RouteRequest, cands: list[Candidate], seed: int
) -> None:
    plan = build_policy("weighted", rng=random.Random(seed)).plan(req, cands)
    weights = [r.candidate.weight for r in plan.ordered]
    if any(w > 0 for w in weights):
        assert weights[0] > 0
    assert weights == sorted(weights, key=lambda w: w <= 0)


def test_weighted_first_pick_follows_weights() -> None:
    cands = [cand("a", weight=1.0), cand("b", weight=3.0), cand("c", weight=6.0)]
    policy = build_policy("weighted", rng=random.Random(1234))
    req = RouteRequest(estimated_input_tokens=10)
    draws = 3000
    firsts = Counter(ids(policy.plan(req, cands))[0] for _ in range(draws))
    for name, expected in {"a": 0.1, "b": 0.3, "c": 0.6}.items():
        assert abs(firsts[name] / draws - expected) < 0.04, firsts


def test_weighted_param_overrides_candidate_weight() -> None:
    cands = [cand("a", weight=100.0), cand("b", weight=1.0)]
    policy = build_policy("weighted", {"weights": {"a": 1.0, "b": 9.0}}, rng=random.Random(7))
    req = RouteRequest(estimated_input_tokens=10)
    firsts = Counter(ids(policy.plan(req, cands))[0] for _ in range(1000))
    assert 0.85 < firsts["b"] / 1000 < 0.95
