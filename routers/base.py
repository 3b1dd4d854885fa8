"""Shared skeleton: parse params, run eligibility, let the subclass rank, assemble the Plan."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import ClassVar

from routers import eligibility
from routers.estimates import (
    DEFAULT_EXPECTED_OUTPUT_TOKENS,
    breakdown,
    expected_cost_usd,
    latency_estimate_s,
)
from routers.params import ParamReader
from routers.schema import Candidate, Plan, Ranked, Rejection, RouteRequest


class BasePolicy:
    """Base for all policies; subclasses set `name`, `extra_params` and implement `rank`."""

    name: ClassVar[str]
    extra_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, params: Mapping[str, object] | None = None, rng: random.Random | None = None
    ) -> None:
        reader = ParamReader(
            self.name, params or {}, self.extra_params | {"expected_output_tokens"}
        )
        self.expected_output_tokens = reader.integer(
            "expected_output_tokens", DEFAULT_EXPECTED_OUTPUT_TOKENS, lo=1
        )
        # Injected so tests and replays are deterministic; a fresh one otherwise.
        self.rng = rng if rng is not None else random.Random()
        self.configure(reader)

    def configure(self, reader: ParamReader) -> None:
        """Read policy-specific params; the default policy has none."""

    def filter(
        self, request: RouteRequest, candidates: Sequence[Candidate]
    ) -> tuple[list[Candidate], list[Rejection]]:
        """Apply hard constraints; subclasses may add their own after calling super()."""
        return eligibility.split(request, candidates, self.expected_output_tokens)

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Order eligible candidates and explain why; implemented by each policy."""
        raise NotImplementedError

    def plan(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Plan:
        """Filter, rank and explain."""
        eligible, rejected = self.filter(request, candidates)
        reasons = [f"{len(eligible)} of {len(candidates)} candidates eligible"]
        ordered: list[Ranked] = []
        if eligible:
            ordered, why = self.rank(request, eligible)
            reasons.extend(why)
        else:
            reasons.append("no eligible candidates")
        return Plan(self.name, tuple(ordered), tuple(reasons), tuple(rejected))

    def breakdown(self, request: RouteRequest, candidate: Candidate) -> dict[str, float]:
        """Common per-candidate explanation using this policy's output-token default."""
        return breakdown(request, candidate, self.expected_output_tokens)

    def latency(self, request: RouteRequest, candidate: Candidate) -> float | None:
        """Latency estimate using this policy's output-token default."""
        return latency_estimate_s(request, candidate, self.expected_output_tokens)

    def cost(self, request: RouteRequest, candidate: Candidate) -> float:
        """Expected cost using this policy's output-token default."""
        return expected_cost_usd(request, candidate, self.expected_output_tokens)
