"""What an upstream failure does to its deployment: counted, and maybe cooled down.

Shared by the fallback loop (failures before the commit point) and committed streams
(failures after it), so a deployment that dies mid-stream is cooled down like one
that fails at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.catalog import Deployment
from gateway.errors import (
    ProviderError,
    UpstreamAuthError,
    UpstreamContextLengthError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)

if TYPE_CHECKING:
    from gateway.services import Services

# The request's fault, not the deployment's: counted, never cooled down.
_NOT_HEALTH = (UpstreamRejectedError, UpstreamContextLengthError)


def record_failure(s: Services, d: Deployment, error: ProviderError, duration_s: float) -> None:
    """An attempt that failed before the commit point: counted, and its health updated."""
    s.metrics.record_attempt(d.provider, d.id, error.outcome, duration_s)
    penalize(s, d, error)


def penalize(s: Services, d: Deployment, error: ProviderError) -> None:
    """The failure streak (and cooldown) of the deployment; alone for a committed
    stream, whose attempt was already counted when it committed."""
    if isinstance(error, _NOT_HEALTH):
        return
    cooldown_s = None
    if isinstance(error, UpstreamRateLimitedError) and error.retry_after_s:
        cooldown_s = error.retry_after_s
    elif isinstance(error, UpstreamAuthError):
        cooldown_s = s.config.routing.cooldown_s
    if s.stats.failure(d.id, cooldown_s=cooldown_s):
        s.metrics.record_cooldown(d.id, s.stats.get(d.id).cooldown_until)
