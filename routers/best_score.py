"""Best-score policy: weighted utility over quality, cost and latency."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from routers.base import BasePolicy
from routers.estimates import quality
from routers.params import ParamReader
from routers.schema import Candidate, Ranked, Rejection, RouteRequest

DEFAULT_WEIGHTS = {"quality": 1.0, "cost": 0.5, "latency": 0.3}


def min_max(values: list[float]) -> list[float]:
    """Scale to 0..1 across the set; all-equal maps to 0 so the term cannot reorder anything."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


class BestScore(BasePolicy):
    """Maximise utility = w_q * quality - w_c * cost - w_l * latency (each min-max scaled).

    Algorithm:
      1. Apply shared eligibility, using the stricter of the request's and the `max_cost_usd`
         param's cost ceiling.
      2. Reject candidates whose quality is below `min_quality` (reason "quality").
      3. Quality is `quality_by_tag[task_tag]` when present, else `quality_score`.
      4. Unknown latency is replaced by the median known latency (0 if none is known), so
         an unmeasured deployment is treated as average rather than best or worst.
      5. Min-max normalise quality, cost and latency across the eligible set.
      6. Sort by utility descending, ties by input order. Each term is monotone in its
         own input, so raising one candidate's quality never lowers its rank.
    """

    name = "best_score"
    extra_params = frozenset({"weights", "max_cost_usd", "min_quality"})

    def configure(self, reader: ParamReader) -> None:
        """Read `weights` {quality, cost, latency}, `max_cost_usd` and `min_quality`."""
        self.weights = DEFAULT_WEIGHTS | reader.number_map("weights", DEFAULT_WEIGHTS)
        self.max_cost_usd = reader.optional_number("max_cost_usd")
        self.min_quality = reader.optional_number("min_quality", hi=1.0)

    def filter(
        self, request: RouteRequest, candidates: Sequence[Candidate]
    ) -> tuple[list[Candidate], list[Rejection]]:
        """Shared rules with the tighter cost ceiling, then the quality floor."""
        ceilings = [x for x in (request.max_cost_usd, self.max_cost_usd) if x is not None]
        if ceilings:
            request = replace(request, max_cost_usd=min(ceilings))
        eligible, rejected = super().filter(request, candidates)
        if self.min_quality is None:
            return eligible, rejected
        floor = self.min_quality
        kept = [c for c in eligible if quality(request, c) >= floor]
        rejected += [
            Rejection(c, "quality", f"quality {quality(request, c):.3f} below min {floor:.3f}")
            for c in eligible
            if quality(request, c) < floor
        ]
        return kept, rejected

    def latencies(self, request: RouteRequest, eligible: list[Candidate]) -> list[float]:
        """Latency estimates with unknowns imputed as the median known value."""
        raw = [self.latency(request, c) for c in eligible]
        known = [x for x in raw if x is not None]
        fill = statistics.median(known) if known else 0.0
        return [fill if x is None else x for x in raw]

    def rank(
        self, request: RouteRequest, eligible: list[Candidate]
    ) -> tuple[list[Ranked], list[str]]:
        """Compute normalised terms and sort by utility descending."""
        q = min_max([quality(request, c) for c in eligible])
        cost = min_max([self.cost(request, c) for c in eligible])
        lat = min_max(self.latencies(request, eligible))
        w = self.weights
        ranked = []
        for i, c in enumerate(eligible):
            utility = w["quality"] * q[i] - w["cost"] * cost[i] - w["latency"] * lat[i]
            norms = {"quality_norm": q[i], "cost_norm": cost[i], "latency_norm": lat[i]}
            ranked.append(Ranked(c, utility, self.breakdown(request, c) | norms))
        ranked.sort(key=lambda r: -r.score)
        weights = ", ".join(f"{k}={v:g}" for k, v in sorted(w.items()))
        return ranked, [f"descending utility (weights {weights}); ties by input order"]
