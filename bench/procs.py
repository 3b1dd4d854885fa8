"""Processes the benchmark starts: launch, wait until they answer, measure memory, stop.

Everything started goes through `ProcessGroup`, whose `close()` stops every process
in reverse order of start (terminate, then kill after a grace period), so the
harness leaves nothing running whatever happens.
"""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:g} s")


def start_module(
    group: ProcessGroup, workdir: Path, module: str, args: Sequence[str], what: str
) -> tuple[int, subprocess.Popen[bytes]]:
    """`python -m bench.<module> --port P <args>` from this repo, once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", f"bench.{module}", "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = group.start(module, cmd, workdir / f"{module}-{port}.log", env=env, cwd=REPO)
    wait_for_port(port, proc, 20, what)
    return port, proc


def wait_for_http(url_host_port: tuple[str, int], path: str, timeout_s: float) -> None:
    host, port = url_host_port
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, port, timeout=0.5)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"http://{host}:{port}{path} did not answer 200 within {timeout_s:g} s")


class ProcessGroup:
    """Owns every process the harness starts; `close()` stops them all, newest first."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(cmd), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=cwd
            )
        self._procs.append((name, proc, stop_signal))
        return proc

    def stop_pid(self, pid: int, grace_s: float = 10.0) -> None:
        for entry in list(self._procs):
            if entry[1].pid == pid:
                self._procs.remove(entry)
                _stop(entry[1], entry[2], grace_s)

    def close(self) -> None:
        while self._procs:
            _, proc, stop_signal = self._procs.pop()
            _stop(proc, stop_signal)


def _stop(proc: subprocess.Popen[bytes], stop_signal: int, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(stop_signal)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory in MiB: now and the high-water mark since the process started;
    of the resident now, how much is the process's own (anonymous: heap, stacks) and how
    much pages of mapped files (code of the interpreter and extensions, faulted in as it
    runs: growth there is not a leak)."""

    rss_mb: float
    peak_rss_mb: float
    anon_mb: float = 0.0
    file_mb: float = 0.0


def memory_of(pid: int) -> Memory | None:
    """Reads /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024  # kB -> MiB
    if "VmRSS" not in fields:
        return None
    rss = fields["VmRSS"]
    return Memory(
        rss, fields.get("VmHWM", rss), fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0)
    )


def children_of(pid: int) -> list[int]:
    """Direct children (uvicorn's workers when the gateway runs several)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found += [int(p) for p in text.split()]
    return found


def worker_pids(pid: int) -> list[int]:
    """The processes that serve requests: the workers if any, else the process itself."""
    workers = [c for c in children_of(pid) if "resource_tracker" not in _cmdline(c)]
    return workers or [pid]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += children_of(pid)
    return found


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime + stime


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its live descendants (uvicorn's workers)."""
    return sum(_cpu_s(p) for p in _descendants(pid))


def _busy_s() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS_PER_S


def _own_s() -> float:
    """CPU of this process and every process it started, reaped ones (wrk) included."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return tree_cpu_s(os.getpid()) + reaped.ru_utime + reaped.ru_stime


class CpuMeter:
    """How busy the machine was with work that is not the benchmark's, in cores.

    Another process's load skews every figure (the gateway, nginx and wrk share the
    cores), so each run records it and the table flags runs where it was high.
    """

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._busy = _busy_s()
        self._own = _own_s()

    def foreign_cores(self) -> float:
        wall_s = time.monotonic() - self._start
        if wall_s <= 0:
            return 0.0
        foreign_s = (_busy_s() - self._busy) - (_own_s() - self._own)
        return max(0.0, foreign_s / wall_s)
