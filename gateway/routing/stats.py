"""Live routing stats per deployment: latency EWMAs, error rate, in-flight, cooldowns.

Kept in process so reading them costs nothing on the hot path. When Redis is
configured, `gateway.routing.stats_sync` merges them across replicas in the background.

Cooldown is a circuit breaker: after `cooldown_failures` consecutive failures (or a
429 with retry-after, or our key being refused) the deployment is skipped until
`cooldown_until`. After that it is half-open: the next request probes it, and one
more failure trips it again at once, because the failure streak is not reset
until a success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from routers import LiveStats

_ALPHA = 0.2  # EWMA weight of the newest sample: reacts in ~5 requests


_NEVER = LiveStats(error_rate=-1.0)  # matches no real reading: the first snapshot is built


@dataclass(slots=True)
class DeploymentStats:
    ttft_ewma_s: float | None = None
    per_token_ewma_s: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    _last: LiveStats = field(default=_NEVER, repr=False, compare=False)

    def snapshot(self) -> LiveStats:
        """The current values as LiveStats; the previous object while they are the same
        (most deployments of a route are not the one that just served), which also lets
        the planner keep its Candidate. Compared by value: fields are set from several
        places (this store, `stats_sync`), so no write can forget to invalidate it."""
        last = self._last
        if (
            last.ttft_ewma_s == self.ttft_ewma_s
            and last.per_token_ewma_s == self.per_token_ewma_s
            and last.error_rate == self.error_rate
            and last.in_flight == self.in_flight
            and last.cooldown_until == self.cooldown_until
        ):
            return last
        self._last = last = LiveStats(  # positional: a frozen dataclass's keywords cost
            self.ttft_ewma_s,
            self.per_token_ewma_s,
            self.error_rate,
            self.in_flight,
            self.cooldown_until,
        )
        return last


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + _ALPHA * (sample - old)


class StatsStore:
    def __init__(self, *, cooldown_failures: int, cooldown_s: float) -> None:
        self._cooldown_failures = cooldown_failures
        self._cooldown_s = cooldown_s
        self._by_id: dict[str, DeploymentStats] = {}

    def get(self, deployment_id: str) -> DeploymentStats:
        stats = self._by_id.get(deployment_id)
        if stats is None:
            stats = self._by_id[deployment_id] = DeploymentStats()
        return stats

    def snapshot(self, deployment_id: str) -> LiveStats:
        return self.get(deployment_id).snapshot()

    def items(self) -> list[tuple[str, DeploymentStats]]:
        return list(self._by_id.items())

    def started(self, deployment_id: str) -> None:
        self.get(deployment_id).in_flight += 1

    def ended(self, deployment_id: str) -> None:
        stats = self.get(deployment_id)
        stats.in_flight = max(0, stats.in_flight - 1)

    def success(
        self, deployment_id: str, ttft_s: float, output_tokens: int, total_s: float
    ) -> None:
        stats = self.get(deployment_id)
        stats.ttft_ewma_s = _ewma(stats.ttft_ewma_s, ttft_s)
        if output_tokens > 0 and total_s > ttft_s:
            stats.per_token_ewma_s = _ewma(
                stats.per_token_ewma_s, (total_s - ttft_s) / output_tokens
            )
        stats.error_rate = _ewma(stats.error_rate, 0.0)
        stats.consecutive_failures = 0

    def failure(self, deployment_id: str, *, cooldown_s: float | None = None) -> bool:
        """Record a failure; returns True when it put the deployment in cooldown."""
        stats = self.get(deployment_id)
        stats.error_rate = _ewma(stats.error_rate, 1.0)
        stats.consecutive_failures += 1
        if cooldown_s is None and stats.consecutive_failures < self._cooldown_failures:
            return False
        wait_s = self._cooldown_s if cooldown_s is None else cooldown_s
        stats.cooldown_until = max(stats.cooldown_until, time.time() + wait_s)
        return True

    def in_cooldown(self, deployment_id: str, now: float | None = None) -> bool:
        return self.get(deployment_id).cooldown_until > (now or time.time())
