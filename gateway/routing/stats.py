"""Live routing stats per deployment: latency EWMAs, error rate, in-flight, cooldowns.

Kept in process so reading them costs nothing on the hot path. When Redis is
configured, `gateway.routing.stats_sync` merges them across replicas in the background.

Cooldown is a circuit breaker: after `cooldown_failures` consecutive failures (or a
429 with retry-after, or our key being refused) the deployment is skipped until
`cooldown_until`. After that it is half-open: at most `half_open_probes` requests at
once probe it (`try_probe`), the others go on to their next candidate; a probe's success
closes the breaker, and its failure trips it again at once, because the failure streak
is not reset until a success.

An operator may end a cooldown (`clear`: GET/DELETE /admin/cooldowns, `gateway
cooldowns`): the breaker closes and its failure streak restarts. A clear made on another
replica arrives through `stats_sync` with the time it was made, and ends only the
cooldowns this process began before that time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from routers import LiveStats

log = logging.getLogger("gateway")
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
    tripped: bool = False  # a cooldown began and no success since: half-open once it ends
    probing: int = 0  # probes of the half-open breaker in flight
    cooled_at: float = 0.0  # unix time this process last began a cooldown (0: never)
    reason: str | None = None  # the outcome of the failure that began it
    cleared_at: float = 0.0  # unix time of the latest clear applied here
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
    def __init__(
        self, *, cooldown_failures: int, cooldown_s: float, half_open_probes: int = 1
    ) -> None:
        self._cooldown_failures = cooldown_failures
        self._cooldown_s = cooldown_s
        self._half_open_probes = half_open_probes
        self._by_id: dict[str, DeploymentStats] = {}
        self._born = time.time()  # a clear made before this store began concerns none of it

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
        if stats.tripped:
            stats.tripped = False
            log.warning("deployment %s recovered: its cooldown is over", deployment_id)

    def failure(
        self, deployment_id: str, *, cooldown_s: float | None = None, reason: str | None = None
    ) -> bool:
        """Record a failure; returns True when it put the deployment in cooldown.
        `reason` (the error's outcome) is kept with the cooldown it begins."""
        stats = self.get(deployment_id)
        stats.error_rate = _ewma(stats.error_rate, 1.0)
        stats.consecutive_failures += 1
        if cooldown_s is None and (
            self._cooldown_failures == 0 or stats.consecutive_failures < self._cooldown_failures
        ):
            return False
        wait_s = self._cooldown_s if cooldown_s is None else cooldown_s
        now = time.time()
        stats.cooldown_until = max(stats.cooldown_until, now + wait_s)
        stats.tripped = True
        stats.cooled_at, stats.reason = now, reason
        return True

    def try_probe(self, deployment_id: str) -> bool | None:
        """Before an attempt: None when the breaker is closed (attempt as usual); True
        when the attempt is a probe of a half-open breaker (counted until `end_probe`);
        False when the half-open breaker's probes are all in flight (skip it)."""
        stats = self._by_id.get(deployment_id)
        if stats is None or not stats.tripped:
            return None
        if stats.probing >= self._half_open_probes:
            return False
        stats.probing += 1
        return True

    def end_probe(self, deployment_id: str) -> None:
        stats = self.get(deployment_id)
        stats.probing = max(0, stats.probing - 1)

    def breakers(self, now: float | None = None) -> list[tuple[str, DeploymentStats]]:
        """The deployments cooling down (`cooldown_until` ahead) or half-open (tripped,
        its cooldown over, no success since)."""
        now = time.time() if now is None else now
        return [(d, s) for d, s in self._by_id.items() if s.cooldown_until > now or s.tripped]

    def clear(self, deployment_id: str, at: float | None = None) -> bool:
        """Ends the deployment's cooldown, made at `at` (default now; a clear from
        another replica carries its own time): the breaker closes and its failure streak
        restarts, unless this process began its cooldown after `at`. A clear older than
        this store or than the last one applied changes nothing. True when it closed a
        breaker that was cooling down or half-open."""
        now = time.time()
        at = now if at is None else at
        stats = self.get(deployment_id)
        if at <= max(stats.cleared_at, self._born):
            return False
        stats.cleared_at = max(stats.cleared_at, at)
        if stats.cooled_at > at:
            return False
        was_open = stats.tripped or stats.cooldown_until > now
        stats.cooldown_until, stats.consecutive_failures = 0.0, 0
        stats.tripped, stats.reason = False, None
        return was_open

    def in_cooldown(self, deployment_id: str, now: float | None = None) -> bool:
        return self.get(deployment_id).cooldown_until > (now or time.time())
