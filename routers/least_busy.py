"""Least-busy policy: spread load by concurrent requests."""

from __future__ import annotations

from routers.base import BasePolicy
from routers.schema import Candidate, Ranked, RouteRequest


class LeastBusy(BasePolicy):
    """Prefer the deployment with the fewest requests in flight.

    Algorithm:
      1. Drop ineligible candidates (shared eligibility rules).
      2. Sort ascending by `stats.in_flight`.
      3. Break ties by latency estimate, with unknown latency after any known one.
      4. Break remaining ties by input order (stable sort).
    Score is the negated in-flight count.
    """

    name = "least_busy"

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Sort by (in_flight, unknown-latency flag, latency)."""

        def key(c: Candidate) -> tuple[int, bool, float]:
            latency = self.latency(request, c)
            return (c.stats.in_flight, latency is None, latency or 0.0)

        ranked = []
        for c in sorted(eligible, key=key):
            detail = self.breakdown(request, c) | {"in_flight": float(c.stats.in_flight)}
            ranked.append(Ranked(c, -float(c.stats.in_flight), detail))
        return ranked, ["ascending in-flight requests; ties by known latency, then input order"]
