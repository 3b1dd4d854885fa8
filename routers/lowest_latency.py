"""Lowest-latency policy: minimise expected response time, with some exploration."""

from __future__ import annotations

from routers.base import BasePolicy
from routers.params import ParamReader
from routers.schema import Candidate, Ranked, RouteRequest


class LowestLatency(BasePolicy):
    """Prefer the fastest deployment, penalising recent errors.

    Algorithm:
      1. Drop ineligible candidates (shared eligibility rules).
      2. Estimate latency = ttft + expected output tokens * per-token time.
      3. Multiply by (1 + error_rate * error_penalty): a fast but flaky deployment
         costs retries, which is latency too.
      4. Put candidates with unknown latency first, in input order, so new or recovered
         deployments get probed and acquire stats.
      5. Sort the rest ascending by penalised latency (ties by input order).
      6. With probability `exploration`, move one uniformly chosen candidate to the front
         so that stale estimates are refreshed.
    Score is the negated penalised latency (0.0 when unknown).
    """

    name = "lowest_latency"
    extra_params = frozenset({"exploration", "error_penalty"})

    def configure(self, reader: ParamReader) -> None:
        """Read `exploration` (0..1, default 0.05) and `error_penalty` (>=0, default 4)."""
        self.exploration = reader.number("exploration", 0.05, lo=0.0, hi=1.0)
        self.error_penalty = reader.number("error_penalty", 4.0, lo=0.0)

    def penalised(self, request: RouteRequest, c: Candidate) -> float | None:
        """Latency estimate inflated by the recent error rate; None when unknown."""
        latency = self.latency(request, c)
        if latency is None:
            return None
        return latency * (1.0 + c.stats.error_rate * self.error_penalty)

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Sort by (known-latency flag, penalised latency), then maybe explore."""

        def key(c: Candidate) -> tuple[bool, float]:
            value = self.penalised(request, c)
            return (value is not None, value or 0.0)

        ordered = sorted(eligible, key=key)
        reasons = ["unknown latency first (probe), then ascending error-penalised latency"]
        # Only touch the rng when exploring is possible, so exploration=0 is rng-neutral.
        if self.exploration > 0 and len(ordered) > 1 and self.rng.random() < self.exploration:
            chosen = ordered.pop(self.rng.randrange(len(ordered)))
            ordered.insert(0, chosen)
            reasons.append(f"exploration: moved {chosen.deployment_id} to the front")
        return [self.to_ranked(request, c) for c in ordered], reasons

    def to_ranked(self, request: RouteRequest, c: Candidate) -> Ranked:
        """Attach the penalised latency to the common breakdown."""
        value = self.penalised(request, c)
        detail = self.breakdown(request, c) | {"error_rate": c.stats.error_rate}
        if value is not None:
            detail["penalised_latency_s"] = value
        return Ranked(c, -(value or 0.0), detail)
