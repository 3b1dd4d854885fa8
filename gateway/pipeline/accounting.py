"""Usage, cost and spend for a finished request: one place, streamed or not."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from gateway.config import Deployment, estimate_tokens, request_cost_usd
from gateway.context import RequestContext
from gateway.keys import Caller
from gateway.limits import Limits, Reservation
from gateway.telemetry import Metrics
from gateway.types import Usage


class Accountant:
    def __init__(self, metrics: Metrics, limits: Limits) -> None:
        self._metrics = metrics
        self._limits = limits

    @staticmethod
    def usage_or_estimate(usage: Usage | None, prompt_chars: int, completion_chars: int) -> Usage:
        """The provider's usage when it sent one, else an estimate marked as such."""
        if usage is not None:
            return usage
        return Usage(
            estimate_tokens(prompt_chars), estimate_tokens(completion_chars), estimated=True
        )

    def settle(
        self,
        ctx: RequestContext,
        caller: Caller,
        d: Deployment,
        usage: Usage,
        reservation: Reservation | None,
    ) -> Coroutine[Any, Any, None]:
        """Prices and records the usage now; returns the limits' settle to await (its
        coroutine, not one more around it)."""
        ctx.usage = usage
        ctx.cost_usd = request_cost_usd(usage, d)
        self._metrics.record_usage(ctx, caller.name, caller.team or "none")
        return self._limits.settle(ctx, caller, reservation)
