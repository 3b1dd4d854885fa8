"""Fallback policy: the operator's configured order."""

from __future__ import annotations

from routers.base import BasePolicy
from routers.schema import Candidate, Ranked, RouteRequest


class Fallback(BasePolicy):
    """Try candidates exactly in the order they were configured.

    Algorithm:
      1. Drop ineligible candidates (shared eligibility rules).
      2. Keep the remaining candidates in input order.
    Score is the negated position, so the first candidate scores highest (0.0).
    """

    name = "fallback"

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Return eligible candidates unchanged in order."""
        ranked = [Ranked(c, -float(i), self.breakdown(request, c)) for i, c in enumerate(eligible)]
        return ranked, ["configured order"]
