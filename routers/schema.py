"""Value types shared by every routing policy.

All types are frozen so a plan can be cached, logged or compared without defensive copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

# Request parameters that are capabilities too: a deployment whose API cannot honour one
# is not eligible for a request that sets it (reason `unsupported_parameter`).
PARAMETER_CAPABILITIES = frozenset({"n", "logprobs", "audio", "prediction", "logit_bias", "seed"})


@dataclass(frozen=True, slots=True)
class LiveStats:
    """Recent runtime observations for one deployment (fed in by the gateway)."""

    ttft_ewma_s: float | None = None
    per_token_ewma_s: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    cooldown_until: float = 0.0
    remaining_rpm: int | None = None
    remaining_tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment the gateway could send the request to."""

    deployment_id: str
    provider: str
    input_price_per_mtok_usd: float
    output_price_per_mtok_usd: float
    context_window_tokens: int
    max_output_tokens: int | None
    capabilities: frozenset[str]
    quality_score: float = 0.5
    # hash=False keeps Candidate hashable even though a dict is stored here.
    quality_by_tag: Mapping[str, float] = field(default_factory=dict, hash=False)
    weight: float = 1.0
    stats: LiveStats = LiveStats()


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the client asked for, reduced to the facts routing needs."""

    estimated_input_tokens: int
    max_output_tokens: int | None = None
    required_capabilities: frozenset[str] = frozenset()
    max_cost_usd: float | None = None
    allowed_providers: frozenset[str] | None = None
    excluded_providers: frozenset[str] = frozenset()
    task_tag: str | None = None
    # The clock is an input so that planning stays pure and testable.
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Ranked:
    """An eligible candidate with its score (higher is better; scale is policy-specific)."""

    candidate: Candidate
    score: float
    breakdown: Mapping[str, float] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A candidate excluded before ranking, with a short reason code and a readable detail."""

    candidate: Candidate
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of a policy: try `ordered` first to last; `rejected` explains the rest."""

    policy: str
    ordered: tuple[Ranked, ...]
    reasons: tuple[str, ...]
    rejected: tuple[Rejection, ...]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable explanation of the plan."""
        return {
            "policy": self.policy,
            "ordered": [
                {
                    "deployment_id": r.candidate.deployment_id,
                    "provider": r.candidate.provider,
                    "score": r.score,
                    "breakdown": dict(r.breakdown),
                }
                for r in self.ordered
            ],
            "reasons": list(self.reasons),
            "rejected": [
                {
                    "deployment_id": r.candidate.deployment_id,
                    "provider": r.candidate.provider,
                    "reason": r.reason,
                    "detail": r.detail,
                }
                for r in self.rejected
            ],
        }


class Policy(Protocol):
    """A routing policy: a pure function from request and candidates to a plan."""

    name: ClassVar[str]

    def plan(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Plan: ...
