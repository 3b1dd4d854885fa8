"""Name -> policy class registry and the config-facing constructor."""

from __future__ import annotations

import random
from collections.abc import Mapping

from routers.base import BasePolicy
from routers.best_score import BestScore
from routers.cheapest import Cheapest
from routers.fallback import Fallback
from routers.least_busy import LeastBusy
from routers.lowest_latency import LowestLatency
from routers.params import PolicyConfigError
from routers.schema import Policy
from routers.weighted import Weighted

# Keys equal module names so config, logs and source files all use one spelling.
POLICIES: dict[str, type[BasePolicy]] = {
    cls.name: cls for cls in (Cheapest, BestScore, LowestLatency, LeastBusy, Weighted, Fallback)
}


def build_policy(
    name: str, params: Mapping[str, object] | None = None, rng: random.Random | None = None
) -> Policy:
    """Instantiate policy `name` with validated `params`; raises PolicyConfigError."""
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyConfigError(f"unknown policy {name!r} (known: {sorted(POLICIES)})")
    if params is not None and not isinstance(params, Mapping):
        raise PolicyConfigError(f"policy {name!r}: params must be a mapping")
    return cls(params, rng)
