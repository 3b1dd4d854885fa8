"""The idle trimmer: freed C-heap pages go back to the OS, only when idle and grown."""

from __future__ import annotations

import asyncio

import pytest

from gateway.telemetry.memory_trim import (
    GROWTH_BYTES,
    IdleTrimmer,
    build_trimmer,
    libc_malloc_trim,
    resident_bytes,
)

MB = 1024 * 1024


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_trims_only_when_idle_and_grown() -> None:
    rss = [100 * MB]
    busy = [0]
    trim = _Counter()
    trimmer = IdleTrimmer(lambda: busy[0], 10.0, trim, rss=lambda: rss[0])

    assert not trimmer.tick()  # nothing grew since start
    rss[0] += GROWTH_BYTES
    busy[0] = 3
    assert not trimmer.tick()  # requests in flight: never walk the heap under load
    busy[0] = 0
    assert trimmer.tick()
    assert trim.calls == 1
    assert not trimmer.tick()  # the same RSS again: already trimmed


def test_a_fall_in_between_lowers_the_mark() -> None:
    rss = [100 * MB]
    trim = _Counter()
    trimmer = IdleTrimmer(lambda: 0, 10.0, trim, rss=lambda: rss[0])
    rss[0] = 90 * MB  # memory went back on its own (a large block unmapped)
    assert not trimmer.tick()
    rss[0] = 90 * MB + GROWTH_BYTES  # grown from the lower mark: worth a trim
    assert trimmer.tick()
    assert trim.calls == 1


def test_switched_off_with_zero() -> None:
    assert build_trimmer(0, lambda: 0) is None


@pytest.mark.skipif(libc_malloc_trim() is None, reason="no glibc malloc_trim here")
def test_real_trim_returns_freed_heap_pages() -> None:
    trim = libc_malloc_trim()
    assert trim is not None
    trimmer = IdleTrimmer(lambda: 0, 10.0, trim)
    # 64 KiB blocks come from the heap (under glibc's mmap threshold); the last one
    # stays, so what is freed below it is not given back by free() on its own.
    blocks = [bytearray(64 * 1024) for _ in range(1500)]
    pin = bytearray(64 * 1024)
    del blocks
    before = resident_bytes()
    assert trimmer.tick()
    after = resident_bytes()
    assert before - after > 50 * MB, (before / MB, after / MB)
    del pin


def test_runs_in_the_background_and_stops() -> None:
    async def run() -> int:
        rss = [100 * MB]
        trim = _Counter()
        trimmer = IdleTrimmer(lambda: 0, 0.01, trim, rss=lambda: rss[0])
        trimmer.start()
        rss[0] += GROWTH_BYTES
        await asyncio.sleep(0.1)
        await trimmer.stop()
        return trim.calls

    assert asyncio.run(run()) == 1
