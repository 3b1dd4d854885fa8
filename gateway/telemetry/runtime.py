"""Process-runtime gauges evaluated at scrape time: `gateway_event_loop_tasks`.

A task that outlives its request (a forgotten upstream read, a settle that never
returns) is a leak no request metric shows; the live task count is the cheapest
signal of one, and the soak test asserts it drains back to its idle level. The
collector is bound to the serving event loop and counts `asyncio.all_tasks(loop)`
when Prometheus scrapes, so it costs nothing per request. It is per process: with
several workers the merged multiprocess view does not carry it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_registered: weakref.WeakKeyDictionary[CollectorRegistry, bool] = weakref.WeakKeyDictionary()


class EventLoopTasksCollector(Collector):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "gateway_event_loop_tasks",
            "Live asyncio tasks on the serving event loop.",
            value=_task_count(self._loop),
        )


def _task_count(loop: asyncio.AbstractEventLoop) -> int:
    if loop.is_closed():
        return 0
    # all_tasks copies a weak set and retries if it changes meanwhile: safe from the
    # metrics listener's thread too.
    return len(asyncio.all_tasks(loop))


def register_runtime_metrics(
    registry: CollectorRegistry, loop: asyncio.AbstractEventLoop | None = None
) -> None:
    """Add the collector once per registry; without `loop`, the one running now (if any)."""
    if registry in _registered:
        return
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to watch (not called from the serving loop)
    registry.register(EventLoopTasksCollector(loop))
    _registered[registry] = True
