"""Planning (which deployments, in which order), live stats and their sync, failures and
cooldowns (and their clearing by operators), the retry budget.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.routing.cooldowns import (
    clear_shared,
    cooldown_entry,
    local_cooldowns,
    run_cooldowns,
)
from gateway.routing.failures import FailureRecorder
from gateway.routing.planning import DEFAULT_ROUTING, Planner, RoutingControls, route_request
from gateway.routing.retry_budget import RetryBudget
from gateway.routing.stats import StatsStore
from gateway.routing.stats_sync import StatsSync

__all__ = [
    "Planner",
    "RoutingControls",
    "RetryBudget",
    "StatsStore",
    "StatsSync",
    "DEFAULT_ROUTING",
    "FailureRecorder",
    "route_request",
    "clear_shared",
    "cooldown_entry",
    "local_cooldowns",
    "run_cooldowns",
]
