"""Shared eligibility rules, their order, and the estimate helpers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from routers import RouteRequest, build_policy
from routers.estimates import expected_cost_usd, latency_estimate_s
from tests.routers.helpers import cand, rejected

REQ = RouteRequest(estimated_input_tokens=1000, now=100.0)

ALLOW_OPENAI = {"allowed_providers": frozenset({"openai"})}
NEED_TOOLS = {"required_capabilities": frozenset({"tools"})}
WANT_200 = {"max_output_tokens": 200}

CASES: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = [
    ("eligible", {}, {}, None),
    ("not_allowed", {"provider": "x"}, ALLOW_OPENAI, "provider_not_allowed"),
    ("excluded", {}, {"excluded_providers": frozenset({"openai"})}, "provider_excluded"),
    ("capability", {"capabilities": frozenset({"stream"})}, NEED_TOOLS, "capability"),
    ("window", {"context_window_tokens": 1100}, WANT_200, "context_window"),
    ("window_exact_fits", {"context_window_tokens": 1200}, WANT_200, None),
    ("max_output", {"max_output_tokens": 100}, WANT_200, "context_window"),
    ("cooldown", {"cooldown_until": 100.5}, {}, "cooldown"),
    ("cooldown_expired", {"cooldown_until": 100.0}, {}, None),
    ("rpm_zero", {"remaining_rpm": 0}, {}, "rate_limit"),
    # 1000 input + 256 default expected output = 1256 tokens needed.
    ("tpm_short", {"remaining_tpm": 1255}, {}, "rate_limit"),
    ("tpm_enough", {"remaining_tpm": 1256}, {}, None),
    ("max_cost", {"input_price_per_mtok_usd": 100.0}, {"max_cost_usd": 0.05}, "max_cost"),
    # Order matters: the first failing rule is the one reported.
    (
        "provider_before_cooldown",
        {"cooldown_until": 999.0},
        ALLOW_OPENAI | {"excluded_providers": frozenset({"openai"})},
        "provider_excluded",
    ),
    (
        "capability_before_window",
        {"capabilities": frozenset(), "context_window_tokens": 1},
        NEED_TOOLS,
        "capability",
    ),
    (
        "window_before_rate_limit",
        {"context_window_tokens": 10, "remaining_rpm": 0},
        {},
        "context_window",
    ),
    ("cooldown_before_rate_limit", {"cooldown_until": 200.0, "remaining_rpm": 0}, {}, "cooldown"),
    (
        "rate_limit_before_cost",
        {"remaining_rpm": 0, "input_price_per_mtok_usd": 1e6},
        {"max_cost_usd": 0.01},
        "rate_limit",
    ),
]


@pytest.mark.parametrize(
    ("cand_kw", "req_kw", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_eligibility_rules(
    cand_kw: dict[str, Any], req_kw: dict[str, Any], reason: str | None
) -> None:
    request = RouteRequest(**({"estimated_input_tokens": 1000, "now": 100.0} | req_kw))
    plan = build_policy("fallback", {}).plan(request, [cand("a", **cand_kw)])
    assert rejected(plan).get("a") == reason
    assert (len(plan.ordered) == 1) == (reason is None)


def test_rejection_detail_is_readable() -> None:
    plan = build_policy("fallback").plan(
        RouteRequest(estimated_input_tokens=8000, max_output_tokens=1000),
        [cand("a", context_window_tokens=8192)],
    )
    assert plan.rejected[0].detail == "needs 9000 tokens, window 8192"


def test_missing_capability_detail_names_it() -> None:
    plan = build_policy("fallback").plan(
        RouteRequest(
            estimated_input_tokens=1, required_capabilities=frozenset({"vision", "tools"})
        ),
        [cand("a", capabilities=frozenset({"tools"}))],
    )
    assert plan.rejected[0].detail == "missing capabilities: vision"


def test_expected_cost_uses_default_then_client_then_cap() -> None:
    c = cand("a", input_price_per_mtok_usd=1.0, output_price_per_mtok_usd=10.0)
    assert expected_cost_usd(REQ, c, 256) == pytest.approx(1000e-6 + 256 * 10e-6)
    client = RouteRequest(estimated_input_tokens=1000, max_output_tokens=50)
    assert expected_cost_usd(client, c, 256) == pytest.approx(1000e-6 + 50 * 10e-6)
    capped = cand("b", output_price_per_mtok_usd=10.0, max_output_tokens=100)
    assert expected_cost_usd(REQ, capped, 256) == pytest.approx(1000e-6 + 100 * 10e-6)


def test_latency_estimate_unknown_when_any_ewma_missing() -> None:
    assert latency_estimate_s(REQ, cand("a", ttft_ewma_s=0.5), 256) is None
    assert latency_estimate_s(REQ, cand("a", per_token_ewma_s=0.01), 256) is None
    both = cand("a", ttft_ewma_s=0.5, per_token_ewma_s=0.01)
    assert latency_estimate_s(REQ, both, 100) == pytest.approx(1.5)


def test_plan_to_dict_is_json() -> None:
    plan = build_policy("cheapest").plan(
        REQ, [cand("a", ttft_ewma_s=0.1, per_token_ewma_s=0.01), cand("b", remaining_rpm=0)]
    )
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["policy"] == "cheapest"
    assert data["ordered"][0]["deployment_id"] == "a"
    assert set(data["ordered"][0]["breakdown"]) >= {"expected_cost_usd", "latency_s", "quality"}
    assert data["rejected"] == [
        {"deployment_id": "b", "provider": "openai", "reason": "rate_limit",
         "detail": "no requests left this minute"}
    ]  # fmt: skip
    assert plan.reasons


def test_empty_plan_explains_itself() -> None:
    plan = build_policy("cheapest").plan(REQ, [])
    assert plan.ordered == () and plan.rejected == ()
    assert "no eligible candidates" in plan.reasons


def test_candidates_are_hashable() -> None:
    assert len({cand("a", quality_by_tag={"code": 0.9}), cand("b")}) == 2
