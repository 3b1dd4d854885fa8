"""Hands freed C-heap memory back to the OS once a burst of load is over.

After 1,000 concurrent streams, glibc keeps the memory their buffers used (about 9 MB
of a worker's 103 MB, measured with `bench.soak`'s stream phase) for reuse, and RSS
stays up while the gateway idles. `malloc_trim(0)` returns its free pages. It walks
the whole heap and holds the allocator's lock meanwhile, so it runs only when nothing
is in flight and RSS grew since the last trim, at most once per interval.

What CPython's own small-object allocator keeps (the rest of the plateau: arenas
still holding a few live objects each) no call can return; README "Benchmark" says
how much that is.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger("gateway")

GROWTH_BYTES = 4 * 1024 * 1024  # less than this since the last trim: not worth a heap walk
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

Trim = Callable[[], object]


def libc_malloc_trim() -> Trim | None:
    """glibc's `malloc_trim(0)`, or None where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: function(0)


def resident_bytes() -> int:
    """This process's RSS, from /proc (0 where there is no /proc: never trims)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class IdleTrimmer:
    """Every `interval_s`: if `in_flight()` is 0 and RSS grew by `GROWTH_BYTES` since
    the last trim (or start), trims. `trim` and `rss` are seams for the tests."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        interval_s: float,
        trim: Trim,
        rss: Callable[[], int] = resident_bytes,
    ) -> None:
        self._in_flight = in_flight
        self._interval_s = interval_s
        self._trim = trim
        self._rss = rss
        self._baseline = rss()
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="memory-trim")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.tick()

    def tick(self) -> bool:
        """One check; True when it trimmed."""
        if self._in_flight() > 0:
            return False
        before = self._rss()
        if before - self._baseline < GROWTH_BYTES:
            self._baseline = min(self._baseline, before)  # freed meanwhile: a lower mark
            return False
        self._trim()
        self.trims += 1
        self._baseline = self._rss()
        log.debug("memory trim: RSS %.1f -> %.1f MB", before / 2**20, self._baseline / 2**20)
        return True


def build_trimmer(interval_s: float, in_flight: Callable[[], int]) -> IdleTrimmer | None:
    """None when switched off (`server.idle_memory_trim_s: 0`) or not on glibc."""
    if interval_s <= 0:
        return None
    trim = libc_malloc_trim()
    if trim is None:
        return None
    return IdleTrimmer(in_flight, interval_s, trim)
