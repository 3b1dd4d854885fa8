"""A process-wide retry budget (Envoy's `retry_budget`), so retries cannot snowball.

Concurrent extra attempts (same-deployment retries and fallbacks) may not exceed
`ratio` x active requests, with a floor of `minimum`: when every upstream is down,
the gateway degrades to one attempt per request instead of multiplying the load.
"""

from __future__ import annotations


class RetryBudget:
    __slots__ = ("_active", "_minimum", "_ratio", "_retrying")

    def __init__(self, ratio: float, minimum: int) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._active = 0
        self._retrying = 0

    def request_started(self) -> None:
        self._active += 1

    def request_ended(self) -> None:
        self._active = max(0, self._active - 1)

    def try_acquire(self) -> bool:
        allowed = max(self._minimum, int(self._ratio * self._active))
        if self._retrying >= allowed:
            return False
        self._retrying += 1
        return True

    def release(self) -> None:
        self._retrying = max(0, self._retrying - 1)
