"""In-process single flight: identical requests in flight share one upstream call.

1. The first request for a key becomes the leader of a `Flight`; it calls upstream.
2. Requests arriving with the same key while it runs wait on the flight (at most
   `max_waiters`, rule 14; past that a request simply goes upstream on its own).
3. The leader resolves the flight with a value every waiter receives, or with None
   ("abandoned": its client left, its stream broke, its own admission failed), in
   which case the first waiter to wake up leads a new flight and the others wait on
   that one.

Per process only. Coalescing across replicas (a short Redis lock that the others
poll the cache behind) is deliberately not done: it would add Redis round trips and
polling delay to every miss, while each replica already sends at most one call per
burst of identical requests.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    """One leader's call. Its future is made when the first waiter comes: most flights
    have none, and finish without one."""

    __slots__ = ("_future", "_value", "done", "waiters")

    def __init__(self) -> None:
        self._future: asyncio.Future[T | None] | None = None
        self._value: T | None = None
        self.done = False
        self.waiters = 0

    def _resolve(self, value: T | None) -> None:
        if self.done:
            return
        self.done, self._value = True, value
        if self._future is not None and not self._future.done():
            self._future.set_result(value)

    async def wait(self, timeout_s: float) -> T | None:
        """The leader's value; TimeoutError after `timeout_s`. Cancelling a waiter
        never cancels the flight (shield)."""
        if self.done:
            return self._value
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        self.waiters += 1
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(self._future)
        finally:
            self.waiters -= 1


class SingleFlight(Generic[T]):
    def __init__(self, max_waiters: int = 1024) -> None:
        self.max_waiters = max_waiters
        self._flights: dict[str, Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str) -> tuple[Flight[T] | None, bool]:
        """(flight, True) to lead; (flight, False) to wait; (None, False) when full."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = Flight()
            return flight, True
        if flight.waiters >= self.max_waiters:
            return None, False
        return flight, False

    def finish(self, key: str, flight: Flight[T], value: T | None) -> None:
        """Resolve (None = abandoned) and forget the flight, so later requests start anew."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight._resolve(value)
