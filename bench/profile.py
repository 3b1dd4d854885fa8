"""Optional profile of the gateway under load (pyinstrument), summarised as text.

The profiled gateway is a second process of the same config run under
`python -m pyinstrument`, loaded like the measured one; its numbers are not in the
table (the profiler slows it down). pyinstrument samples from inside the process, so
time lands on the code that spent it. py-spy was tried first: on this kind of VM its
samples land almost only on system calls (a loop of 25 parts Python to 1 part
`os.urandom` came out 1 to 140), which would point at the wrong code.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_STDLIB = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"


def profiler_available() -> bool:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return False
    return True


def profiled_module(out_path: Path, interval_s: float = 0.0005) -> list[str]:
    """Arguments that run `python -m <module>` under pyinstrument, written at exit."""
    return ["-m", "pyinstrument", "-r", "pyisession", "-o", str(out_path), "-i", str(interval_s)]


class _Tally:
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self.own: Counter[str] = Counter()  # seconds (Counter of floats)
        self.own_by_package: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()

    def walk(self, frame: Any, ancestors: frozenset[str]) -> None:
        path = self._short(frame.file_path or "")
        name = f"{frame.function} ({path})"
        own_s = sum(c.time for c in frame.children if c.is_synthetic)
        self.own[f"{frame.function} ({path}:{frame.line_no})"] += own_s
        self.own_by_package[_package(path)] += own_s
        if path.startswith(("gateway/", "routers/")) and name not in ancestors:
            self.inclusive[name] += frame.time
        for child in frame.children:
            if not child.is_synthetic:
                self.walk(child, ancestors | {name})

    def _short(self, path: str) -> str:
        for prefix in self.prefixes:
            index = path.find(prefix)
            if index != -1:
                return path[index + len(prefix) :]
        return path


def _package(path: str) -> str:
    return path.split("/")[0] if "/" in path else path


def _serving_frame(root: Any) -> Any:
    """The event loop's frame: percentages leave out start-up imports and shutdown."""
    best, queue = root, [root]
    while queue:
        frame = queue.pop()
        if (frame.file_path or "").endswith("asyncio/runners.py") and (
            best is root or frame.time > best.time
        ):
            best = frame
        queue += [c for c in frame.children if not c.is_synthetic]
    return best


def summarise(session_path: Path, src_root: Path, top: int = 25) -> list[str]:
    """Own time by package and by line, and inclusive time of our functions."""
    from pyinstrument.session import Session

    serving = _serving_frame(Session.load(str(session_path)).root_frame())
    prefixes = ("site-packages/", _STDLIB, f"{src_root.resolve()}/")
    tally = _Tally(prefixes)
    tally.walk(serving, frozenset())
    total_s = serving.time or 1.0
    lines = [f"profile: {total_s:.1f} s in the event loop; own time by package:"]
    lines += _percent(tally.own_by_package.most_common(12), total_s)
    lines.append("own time by function (file:first line; pyinstrument has no line numbers):")
    lines += _percent(tally.own.most_common(top), total_s)
    lines.append("inclusive time of gateway/ and routers/ functions (callees included):")
    lines += _percent(tally.inclusive.most_common(top), total_s)
    return lines


def _percent(items: Sequence[tuple[str, float]], total_s: float) -> list[str]:
    return [f"  {100 * value / total_s:5.1f}%  {name}" for name, value in items]
