"""Request metrics summed in plain Python, applied to prometheus_client in batches.

A prometheus_client update is several Python calls and a lock (with several workers,
also a write into a memory-mapped file); a request makes about a dozen, some 8% of
the gateway's CPU. Here the hot path adds to a `PendingCount` or buckets an
observation in a `PendingHistogram`, and `PendingMetrics.flush` applies the sums:
before every scrape this process serves, and once a second in the background (so
another worker, or the metrics supervisor, reads values at most that old).

Everything here runs on the event loop's thread; the separate metrics listener's thread
asks the loop to flush (`call_on_loop`) instead of touching the sums itself.
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

FLUSH_INTERVAL_S = 1.0


class PendingCount:
    """Increments of one counter child."""

    __slots__ = ("child", "amount")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.amount = 0.0

    def flush(self) -> None:
        if self.amount:
            amount, self.amount = self.amount, 0.0
            self.child.inc(amount)


class PendingHistogram:
    """Observations of one histogram child, bucketed as prometheus_client buckets them
    (the first upper bound >= the value, +Inf last)."""

    __slots__ = ("child", "bounds", "counts", "total")

    def __init__(self, child: Any, bounds: Sequence[float]) -> None:
        self.child = child
        self.bounds = list(bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        if not any(self.counts):
            return
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0.0
        # prometheus_client has no public call to add many observations at once; these
        # are the values its own `observe` increments (tests/features/test_metrics.py
        # checks the exposition against the requests made).
        self.child._sum.inc(total)
        buckets = self.child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)


class PendingMetrics:
    """The pending sums of one process, by prometheus_client child."""

    def __init__(self) -> None:
        self._counts: dict[int, PendingCount] = {}
        self._histograms: dict[int, PendingHistogram] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def count(self, child: Any) -> PendingCount:
        pending = self._counts.get(id(child))
        if pending is None:
            pending = self._counts[id(child)] = PendingCount(child)
        return pending

    def histogram(self, child: Any) -> PendingHistogram:
        pending = self._histograms.get(id(child))
        if pending is None:
            bounds = child._upper_bounds  # prometheus_client's own, +Inf included
            pending = self._histograms[id(child)] = PendingHistogram(child, bounds)
        return pending

    def flush(self) -> None:
        for count in self._counts.values():
            count.flush()
        for histogram in self._histograms.values():
            histogram.flush()

    def start(self, flush: Callable[[], None] | None = None) -> None:
        """The once-a-second flush, on the running loop (the app's lifespan); `flush`:
        what to run each time instead of `self.flush` (the owner's, which calls it)."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(flush or self.flush), name="metrics-flush")

    async def _run(self, flush: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            flush()

    async def stop(self) -> None:
        """Ends the background flush (the owner applies the last sums itself)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def call_on_loop(self, work: Callable[[], None], timeout_s: float = 1.0) -> None:
        """From another thread: run `work` on the loop and wait for it (at most
        `timeout_s`: a busy loop then leaves a scrape one flush interval behind)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def run() -> None:
            try:
                work()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            return
        done.wait(timeout_s)
