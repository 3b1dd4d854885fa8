"""Pure routing-policy library: rank candidate deployments for a request.

No I/O and stdlib only: the gateway passes in live stats and the clock, and gets back an
explainable `Plan`.
"""

from __future__ import annotations

from routers.params import PolicyConfigError
from routers.registry import POLICIES, build_policy
from routers.schema import (
    PARAMETER_CAPABILITIES,
    Candidate,
    LiveStats,
    Plan,
    Policy,
    Ranked,
    Rejection,
    RouteRequest,
)

__all__ = [
    "PARAMETER_CAPABILITIES",
    "POLICIES",
    "Candidate",
    "LiveStats",
    "Plan",
    "Policy",
    "PolicyConfigError",
    "Ranked",
    "Rejection",
    "RouteRequest",
    "build_policy",
]
