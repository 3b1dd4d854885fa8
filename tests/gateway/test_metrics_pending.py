"""Pending sums, once flushed, expose exactly what prometheus_client's own calls do."""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.telemetry.metrics import LATENCY_BUCKETS_S
from gateway.telemetry.pending import PendingMetrics

# On a bound, between bounds, under the first, over the last, and zero.
VALUES = (0.001, 0.0025, 0.0031, 0.0004, 0.0, 61.0, 0.25, 0.2500001, 5.0, 0.001)


def _pair() -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ("a",), buckets=LATENCY_BUCKETS_S, registry=registry)
    counter = Counter("c", "c", ("a",), registry=registry)
    return registry, histogram, counter


def _text(registry: CollectorRegistry) -> list[bytes]:
    """The exposition without `*_created` lines (creation times differ)."""
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def test_flushed_sums_expose_what_direct_updates_do() -> None:
    direct_registry, direct_histogram, direct_counter = _pair()
    pending_registry, histogram, counter = _pair()
    pending = PendingMetrics()
    observed = pending.histogram(histogram.labels("x"))
    counted = pending.count(counter.labels("x"))
    for value in VALUES:
        direct_histogram.labels("x").observe(value)
        direct_counter.labels("x").inc(value)
        observed.observe(value)
        counted.amount += value
    assert _text(pending_registry) != _text(direct_registry)  # not yet
    pending.flush()
    assert _text(pending_registry) == _text(direct_registry)
    for value in VALUES[:3]:  # a second batch adds to the first
        direct_histogram.labels("x").observe(value)
        observed.observe(value)
    pending.flush()
    pending.flush()  # nothing pending: nothing added twice
    assert _text(pending_registry) == _text(direct_registry)


def test_the_same_child_shares_one_pending_sum() -> None:
    _, histogram, counter = _pair()
    pending = PendingMetrics()
    assert pending.count(counter.labels("x")) is pending.count(counter.labels("x"))
    assert pending.histogram(histogram.labels("x")) is pending.histogram(histogram.labels("x"))
    assert pending.count(counter.labels("x")) is not pending.count(counter.labels("y"))


def test_another_thread_gets_its_work_run_on_the_loop() -> None:
    ran_on: list[threading.Thread] = []

    async def main() -> None:
        pending = PendingMetrics()
        pending.start()
        worker = threading.Thread(
            target=pending.call_on_loop, args=(lambda: ran_on.append(threading.current_thread()),)
        )
        worker.start()
        while worker.is_alive():
            await asyncio.sleep(0.01)
        await pending.stop()

    asyncio.run(main())
    assert ran_on == [threading.main_thread()]
