"""Weighted policy: random traffic split proportional to configured weights."""

from __future__ import annotations

from routers.base import BasePolicy
from routers.params import ParamReader
from routers.schema import Candidate, Ranked, RouteRequest


class Weighted(BasePolicy):
    """Random order in which each candidate is first with probability weight / total.

    Algorithm:
      1. Drop ineligible candidates (shared eligibility rules).
      2. Effective weight = `weights[deployment_id]` param if given, else candidate.weight;
         negative weights count as 0.
      3. For each positive-weight candidate draw u ~ U(0, 1) and key = u ** (1 / weight)
         (Efraimidis-Spirakis: sorting by key descending is weighted sampling without
         replacement, so the later positions are also a sensible fallback order).
      4. Sort positive-weight candidates by key descending (ties by input order).
      5. Append weight-0 candidates last in input order: never picked first, still usable
         as a fallback.
    Score is the sampling key (0.0 for weight-0 candidates).
    """

    name = "weighted"
    extra_params = frozenset({"weights"})

    def configure(self, reader: ParamReader) -> None:
        """Read `weights`: optional mapping deployment_id -> non-negative weight."""
        self.weight_overrides = reader.number_map("weights")

    def weight(self, c: Candidate) -> float:
        """Effective weight of a candidate."""
        return max(0.0, self.weight_overrides.get(c.deployment_id, c.weight))

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Draw keys for positive weights, sort, then append zero weights."""
        keyed: list[tuple[float, Candidate]] = []
        zero: list[Candidate] = []
        for c in eligible:
            w = self.weight(c)
            if w > 0:
                keyed.append((self.rng.random() ** (1.0 / w), c))
            else:
                zero.append(c)
        keyed.sort(key=lambda pair: -pair[0])
        ranked = [Ranked(c, key, self.detail(request, c)) for key, c in keyed]
        ranked += [Ranked(c, 0.0, self.detail(request, c)) for c in zero]
        return ranked, ["weighted random order; weight-0 candidates last in input order"]

    def detail(self, request: RouteRequest, c: Candidate) -> dict[str, float]:
        """Common breakdown plus the effective weight."""
        return self.breakdown(request, c) | {"weight": self.weight(c)}
