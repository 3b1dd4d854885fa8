"""Cheapest policy: minimise expected spend."""

from __future__ import annotations

from routers.base import BasePolicy
from routers.schema import Candidate, Ranked, RouteRequest


class Cheapest(BasePolicy):
    """Prefer the lowest expected cost.

    Algorithm:
      1. Drop ineligible candidates (shared eligibility rules).
      2. Compute expected cost = input tokens * input price + expected output * output price.
      3. Sort ascending by expected cost.
      4. Break cost ties by latency estimate, with unknown latency after any known one.
      5. Break remaining ties by input order (stable sort).
    Score is the negated expected cost, so higher is better as in every policy.
    """

    name = "cheapest"

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Sort by (cost, unknown-latency flag, latency); the sort is stable for input order."""
        # The breakdown holds the cost and latency: computed once per candidate.
        explained = [(c, self.breakdown(request, c)) for c in eligible]

        def key(item: tuple[Candidate, dict[str, float]]) -> tuple[float, bool, float]:
            latency = item[1].get("latency_s")
            return (item[1]["expected_cost_usd"], latency is None, latency or 0.0)

        explained.sort(key=key)
        ranked = [Ranked(c, -b["expected_cost_usd"], b) for c, b in explained]
        return ranked, ["ascending expected cost; ties by known latency, then input order"]
