"""What an upstream failure does to its deployment: counted, and maybe cooled down.

Shared by the fallback loop (failures before the commit point) and committed streams
(failures after it), so a deployment that dies mid-stream is cooled down like one
that fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Deployment
from gateway.errors import (
    ProviderError,
    UpstreamAuthError,
    UpstreamContextLengthError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from gateway.routing.stats import StatsStore
from gateway.telemetry import Metrics

# The request's fault, not the deployment's: counted, never cooled down.
_NOT_HEALTH = (UpstreamRejectedError, UpstreamContextLengthError)


@dataclass(frozen=True, slots=True)
class FailureRecorder:
    stats: StatsStore
    metrics: Metrics
    auth_cooldown_s: float  # routing.cooldown_s: how long a rejected key cools its deployment

    def record(self, d: Deployment, error: ProviderError, duration_s: float) -> None:
        """An attempt that failed before the commit point: counted, and its health updated."""
        self.metrics.record_attempt(d.provider, d.id, error.outcome, duration_s)
        self.penalize(d, error)

    def penalize(self, d: Deployment, error: ProviderError) -> None:
        """The failure streak (and cooldown) of the deployment; alone for a committed
        stream, whose attempt was already counted when it committed."""
        if isinstance(error, _NOT_HEALTH):
            return
        cooldown_s = None
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after_s:
            cooldown_s = error.retry_after_s
        elif isinstance(error, UpstreamAuthError):
            cooldown_s = self.auth_cooldown_s
        if self.stats.failure(d.id, cooldown_s=cooldown_s):
            self.metrics.record_cooldown(d.id, self.stats.get(d.id).cooldown_until)
