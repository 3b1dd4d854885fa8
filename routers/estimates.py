"""Cost, latency and quality estimates shared by eligibility and the policies."""

from __future__ import annotations

from routers.schema import Candidate, RouteRequest

DEFAULT_EXPECTED_OUTPUT_TOKENS = 256


def expected_output_tokens(request: RouteRequest, candidate: Candidate, default: int) -> int:
    """Output tokens to budget for: the client's max_tokens, else the policy default.

    Capped by the deployment's own output limit because it can never produce more.
    """
    tokens = request.max_output_tokens if request.max_output_tokens is not None else default
    if candidate.max_output_tokens is not None:
        tokens = min(tokens, candidate.max_output_tokens)
    return tokens


def expected_cost_usd(request: RouteRequest, candidate: Candidate, default_out: int) -> float:
    """Expected USD cost of serving the request on this candidate."""
    return _cost_usd(request, candidate, expected_output_tokens(request, candidate, default_out))


def _cost_usd(request: RouteRequest, candidate: Candidate, output_tokens: int) -> float:
    return (
        request.estimated_input_tokens * candidate.input_price_per_mtok_usd / 1e6
        + output_tokens * candidate.output_price_per_mtok_usd / 1e6
    )


def latency_estimate_s(
    request: RouteRequest, candidate: Candidate, default_out: int
) -> float | None:
    """Expected seconds to the full response, or None when either EWMA is still unknown."""
    return _latency_s(candidate, expected_output_tokens(request, candidate, default_out))


def _latency_s(candidate: Candidate, output_tokens: int) -> float | None:
    stats = candidate.stats
    if stats.ttft_ewma_s is None or stats.per_token_ewma_s is None:
        return None
    return stats.ttft_ewma_s + output_tokens * stats.per_token_ewma_s


def quality(request: RouteRequest, candidate: Candidate) -> float:
    """Task-specific quality when the request is tagged and the candidate has a score for it."""
    if request.task_tag is not None and request.task_tag in candidate.quality_by_tag:
        return candidate.quality_by_tag[request.task_tag]
    return candidate.quality_score


def breakdown(request: RouteRequest, candidate: Candidate, default_out: int) -> dict[str, float]:
    """The common explanation attached to every ranked candidate (unknown latency omitted)."""
    out = expected_output_tokens(request, candidate, default_out)
    result = {
        "expected_cost_usd": _cost_usd(request, candidate, out),
        "expected_output_tokens": float(out),
        "quality": quality(request, candidate),
    }
    latency = _latency_s(candidate, out)
    if latency is not None:
        result["latency_s"] = latency
    return result
