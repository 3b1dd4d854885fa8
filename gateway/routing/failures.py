"""What an upstream failure does to its deployment: counted, and maybe cooled down.

Shared by the fallback loop (failures before the commit point) and committed streams
(failures after it), so a deployment that dies mid-stream is cooled down like one
that fails at once.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from gateway.config import Deployment
from gateway.errors import (
    ProviderError,
    StreamTimeoutError,
    UpstreamAuthError,
    UpstreamContextLengthError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from gateway.routing.stats import StatsStore
from gateway.telemetry import Metrics

log = logging.getLogger("gateway")
LOG_EVERY_S = 10.0  # at most one failure line per deployment this often (with a count)
# Things that look like credentials, in an upstream's error text: never logged.
_SECRET = re.compile(
    r"(?i)(bearer\s+\S+|\b(?:sk|rk|pk|gsk|xai|key)[-_][A-Za-z0-9_\-]{6,}|\bAIza[\w\-]{10,})"
)


class FailureLog:
    """One warning per failed attempt, at most one line per deployment per LOG_EVERY_S
    (the next one says how many it stands for): an outage logs, but does not flood."""

    __slots__ = ("_last", "_quiet")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def failed(self, d: Deployment, error: ProviderError) -> None:
        now = time.monotonic()
        if now - self._last.get(d.id, -LOG_EVERY_S) < LOG_EVERY_S:
            self._quiet[d.id] = self._quiet.get(d.id, 0) + 1
            return
        self._last[d.id] = now
        more = self._quiet.pop(d.id, 0)
        log.warning(
            "upstream attempt failed: deployment=%s status=%s error=%s message=%r%s",
            d.id,
            error.upstream_status if error.upstream_status is not None else "-",
            error.outcome,
            redacted(error.message),
            f" (and {more} more since the last line)" if more else "",
        )


def redacted(text: str, limit: int = 200) -> str:
    """An upstream's message, fit for a log: anything like a key masked, truncated."""
    text = _SECRET.sub("[redacted]", text)
    return text if len(text) <= limit else text[:limit] + "..."


# The request's fault, or the gateway's own limit on a whole stream, not the
# deployment's: counted, never cooled down.
_NOT_HEALTH = (UpstreamRejectedError, UpstreamContextLengthError, StreamTimeoutError)


@dataclass(frozen=True, slots=True)
class FailureRecorder:
    stats: StatsStore
    metrics: Metrics
    auth_cooldown_s: float | None  # how long a refused key cools its deployment (None: not)
    on_retry_after: bool = True  # routing.cooldown_on_retry_after
    log: FailureLog = field(default_factory=FailureLog)

    def record(self, d: Deployment, error: ProviderError, duration_s: float) -> None:
        """An attempt that failed before the commit point: counted, logged, and its
        health updated."""
        self.metrics.record_attempt(d.provider, d.id, error.outcome, duration_s)
        self.log.failed(d, error)
        self.penalize(d, error)

    def penalize(self, d: Deployment, error: ProviderError) -> None:
        """The failure streak (and cooldown) of the deployment; alone for a committed
        stream, whose attempt was already counted when it committed."""
        if isinstance(error, _NOT_HEALTH):
            return
        cooldown_s = None
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after_s:
            if self.on_retry_after:
                cooldown_s = error.retry_after_s
        elif isinstance(error, UpstreamAuthError):
            cooldown_s = self.auth_cooldown_s
        was_cooling = self.stats.in_cooldown(d.id)
        if self.stats.failure(d.id, cooldown_s=cooldown_s, reason=error.outcome):
            until = self.stats.get(d.id).cooldown_until
            self.metrics.record_cooldown(d.id, until)
            if not was_cooling:
                log.warning(
                    "deployment %s cooling down for %.1fs after %s",
                    d.id,
                    max(0.0, until - time.time()),
                    error.outcome,
                )
