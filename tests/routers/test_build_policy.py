"""build_policy: registry coverage and config validation errors."""

from __future__ import annotations

from typing import Any

import pytest

from routers import POLICIES, Policy, PolicyConfigError, RouteRequest, build_policy
from tests.routers.helpers import POLICY_NAMES, cand


def test_registry_names() -> None:
    assert set(POLICIES) == set(POLICY_NAMES)
    assert all(cls.name == key for key, cls in POLICIES.items())


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_builds_and_plans(name: str) -> None:
    policy: Policy = build_policy(name, {"expected_output_tokens": 128})
    plan = policy.plan(RouteRequest(estimated_input_tokens=10), [cand("a")])
    assert [r.candidate.deployment_id for r in plan.ordered] == ["a"]


def test_config_error_is_value_error() -> None:
    assert issubclass(PolicyConfigError, ValueError)


EOT = "expected_output_tokens"

BAD: list[tuple[str, str, Any, str]] = [
    ("unknown_policy", "fastest", {}, "fastest"),
    ("unknown_param", "cheapest", {"exploration": 0.1}, "exploration"),
    ("params_not_mapping", "cheapest", ["x"], "mapping"),
    ("expected_output_str", "cheapest", {EOT: "256"}, EOT),
    ("expected_output_float", "fallback", {EOT: 2.5}, EOT),
    ("expected_output_bool", "fallback", {EOT: True}, EOT),
    ("expected_output_zero", "least_busy", {EOT: 0}, EOT),
    ("exploration_range", "lowest_latency", {"exploration": 1.5}, "exploration"),
    ("error_penalty_negative", "lowest_latency", {"error_penalty": -1}, "error_penalty"),
    ("weights_not_mapping", "weighted", {"weights": [1, 2]}, "weights"),
    ("weights_negative", "weighted", {"weights": {"a": -1}}, "weights.a"),
    ("best_weights_unknown_key", "best_score", {"weights": {"speed": 1}}, "speed"),
    ("best_weights_nan", "best_score", {"weights": {"cost": float("nan")}}, "weights.cost"),
    ("min_quality_range", "best_score", {"min_quality": 2}, "min_quality"),
    ("max_cost_type", "best_score", {"max_cost_usd": "1"}, "max_cost_usd"),
]


@pytest.mark.parametrize(
    ("name", "params", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_build_policy_errors(name: str, params: Any, needle: str) -> None:
    with pytest.raises(PolicyConfigError, match=needle):
        build_policy(name, params)


def test_valid_optional_params_accepted() -> None:
    build_policy("best_score", {"weights": {"quality": 2, "cost": 0.0}, "max_cost_usd": None})
    build_policy("lowest_latency", {"exploration": 0, "error_penalty": 1.5})
    build_policy("weighted", {"weights": {"a": 2}}, rng=None)
