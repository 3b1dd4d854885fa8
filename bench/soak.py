"""Memory soak: does the gateway's memory stay flat under repeated load (issue 8)?

    .venv/bin/python -m bench.soak [--minutes 10] [--cycle-s 30] [--workers 1]

Starts nginx, Redis, the paced upstream and one gateway (`gateway serve`) whose config
serves both the `realistic` route and a stream model over the paced upstream, then
alternates load phases with wrk until the minutes are spent (three whole rounds at
least): non-streaming chat with unique prompts (cache misses) at c=64, the same with
one prompt (cache hits) at c=64, and paced streams with unique prompts at c=1000 (less
when the open-file limit is too small). After each phase and a short idle gap it
samples the gateway's RSS and open file descriptors per worker (idle pooled upstream
connections included); after the last phase, once those connections closed, the end
reading.

CPython keeps freed memory for reuse rather than handing it back to the OS (its small
object allocator frees an arena only once every object in it is gone), so RSS after
load stays at a plateau above the rest figure. The check is therefore that later
rounds do not grow RSS beyond the plateau reached by the end of round 2 (round 1 may
not reach the full stream concurrency; its reading is printed too): "no growth" when
end - plateau <= max(5 MB, 5% of the plateau) and no request failed.
The verdict is printed and stored; the exit code is 0 whenever the soak ran through
(1 when it was aborted, 2 when nginx or wrk is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import gateway as gw
from bench.nginx import CHAT_PATH, Upstream, start_nginx
from bench.probe import probe
from bench.procs import CpuMeter, ProcessGroup, worker_pids
from bench.report import describe_machine, machine
from bench.scenarios import Pacing
from bench.slow_upstream import start_paced
from bench.wrk import LoadResult, chat_body, lua_script, missing_tools, run_wrk

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The plateau is the end of round 2: the first round may not reach the full stream
# concurrency (connections wait in the accept queue while one worker catches up), so
# CPython's allocator may take its peak only in round 2. Growth needs a later round.
PLATEAU_ROUND = 2
MIN_ROUNDS = PLATEAU_ROUND + 1
GROWTH_FLOOR_MB = 5.0
GROWTH_SHARE = 0.05
RSS_TARGET_MB = 120.0  # issue 8: per worker, at rest and under the 1,000-stream load
FDS_PER_STREAM = 2  # the gateway holds the client's socket and the upstream's
FDS_RESERVED = 256  # log files, Redis, listening sockets, the interpreter's own
# At rest the gateway holds what it held before the load, plus a few Redis connections
# its pool kept; idle upstream connections close after aiohttp's keep-alive (15-30 s).
REST_FDS_SLACK = 16
PACED_PROVIDER = "paced"  # the paced upstream's provider in the combined config


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    body: str  # wrk body template (bench.wrk.chat_body)
    connections: int
    unique: bool
    stream: bool


@dataclass(frozen=True, slots=True)
class Sample:
    """The gateway after one phase and the idle gap that followed it."""

    round: int
    phase: str
    at_s: float  # since the first phase started
    load: LoadResult
    foreign_cores: float  # CPU other processes used during the phase
    rss_mb: list[float]  # per worker
    peak_rss_mb: list[float]  # per worker, the high-water mark since it started
    fds: list[int]  # per worker
    anon_mb: list[float] = field(default_factory=list)  # of rss: heap (per worker)
    file_mb: list[float] = field(default_factory=list)  # of rss: mapped files' pages


@dataclass(frozen=True, slots=True)
class Rest:
    """The gateway after the last phase, once its idle connections closed (or `--rest-s`)."""

    at_s: float  # since the first phase started
    waited_s: float
    rss_mb: list[float]  # per worker
    fds: list[int]  # per worker


@dataclass
class Soak:
    rest_rss_mb: list[float] = field(default_factory=list)
    start_fds: list[int] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    end_rest: Rest | None = None
    stream_connections: int = 0
    phases_per_round: int = 0
    problems: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load time, at least")
    parser.add_argument("--cycle-s", type=int, default=30, help="seconds per load phase")
    parser.add_argument("--idle-s", type=float, default=3.0, help="rest between phases")
    parser.add_argument(
        "--rest-s",
        type=float,
        default=60.0,
        help="after the last phase, wait up to this long for the fds to return to rest",
    )
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--concurrency", type=int, default=64, help="non-streaming phases")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent paced streams")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--output", type=Path, help="JSON result file (default bench/results/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    info = machine(gw.REPO)
    soak = Soak(stream_connections=stream_connections(args.streams))
    print(
        f"memory soak: {args.minutes:g} min of load (at least {MIN_ROUNDS} rounds), "
        f"{args.cycle_s} s per phase, {args.idle_s:g} s idle between; "
        f"{args.workers} gateway worker(s); c={args.concurrency}, "
        f"{soak.stream_connections} streams"
    )
    print(describe_machine(info), flush=True)
    error: BaseException | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # The pid in the name tells this run's processes from another run's.
        with tempfile.TemporaryDirectory(prefix=f"gateway-bench-{os.getpid()}-") as tmp:
            _soak(args, Path(tmp), soak)
    except (Exception, KeyboardInterrupt) as exc:
        error = exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = summarise(soak)
    print()
    print("\n".join(summary_lines(soak, summary, args.workers)))
    output = args.output or RESULTS_DIR / f"soak-{datetime.now():%Y%m%d-%H%M%S}.json"
    _write_json(output, info, args, soak, summary)
    print(f"\nresults: {output}")
    if error is not None:
        print(f"soak aborted: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stream_connections(wanted: int) -> int:
    """As many streams as asked, within what the open-file limit lets the gateway hold.

    The soft limit is raised to the hard one first; the processes started inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, (soft - FDS_RESERVED) // FDS_PER_STREAM))


def soak_config(upstream: Upstream, paced: Upstream, redis_url: str | None) -> dict[str, Any]:
    """The realistic config plus the minimal config's stream model over the paced upstream
    (`gw.STREAM_MODEL`, which the bench key may use too)."""
    config = gw.realistic_config(upstream, redis_url)
    streaming = gw.minimal_config(paced)
    config["providers"][PACED_PROVIDER] = streaming["providers"]["nginx-sse"]
    model = next(m for m in streaming["models"] if m["name"] == gw.STREAM_MODEL)
    config["models"].append({**model, "provider": PACED_PROVIDER})
    for key in config["auth"]["keys"]:
        key["routes"].append(gw.STREAM_MODEL)
    return config


def _soak(args: argparse.Namespace, workdir: Path, soak: Soak) -> None:
    group = ProcessGroup()
    try:
        upstream = start_nginx(group, workdir, gw.MODEL)
        redis_url = None
        if gw.redis_binary() is not None:
            redis_url = gw.start_redis(group, workdir)
        else:
            soak.problems.append("redis-server absent: ran without Redis")
        pacing = Pacing()
        paced = start_paced(group, workdir, pacing.ttft_ms, pacing.chunks, pacing.interval_ms)
        config = soak_config(upstream, paced, redis_url)
        server = gw.start_gateway(group, workdir, "soak", config, args.workers)
        url = server.url + CHAT_PATH
        phases = _phases(args, soak.stream_connections)
        soak.phases_per_round = len(phases)
        for phase in phases:  # also stores the cache-hit phase's entry
            problem = probe(url, phase.body, gw.BENCH_KEY, stream=phase.stream)
            if problem is not None:
                raise RuntimeError(f"{phase.name}: the gateway answered wrongly: {problem}")
        soak.rest_rss_mb = [round(m.rss_mb, 1) for m in server.memory()]
        soak.start_fds = [_fds(pid) for pid in worker_pids(server.pid)]
        print(f"at rest: RSS {_mb(soak.rest_rss_mb)} MB, fds {_ints(soak.start_fds)}", flush=True)
        _load_rounds(args, workdir, server, phases, soak)
    finally:
        group.close()


def _phases(args: argparse.Namespace, streams: int) -> list[Phase]:
    c, route, stream_model = args.concurrency, gw.ROUTE, gw.STREAM_MODEL
    return [
        Phase("misses", chat_body(route, stream=False, unique=True), c, True, False),
        Phase("hits", chat_body(route, stream=False, unique=False), c, False, False),
        # Unique prompts: identical streams would coalesce into one upstream call.
        Phase("streams", chat_body(stream_model, stream=True, unique=True), streams, True, True),
    ]


def _load_rounds(
    args: argparse.Namespace,
    workdir: Path,
    server: gw.GatewayServer,
    phases: list[Phase],
    soak: Soak,
) -> None:
    started = time.monotonic()
    budget_s = args.minutes * 60
    round_no = 0
    while round_no < MIN_ROUNDS or time.monotonic() - started < budget_s:
        round_no += 1
        for phase in phases:
            meter = CpuMeter()
            load, _ = run_wrk(
                server.url + CHAT_PATH,
                _script(workdir, phase),
                connections=phase.connections,
                duration_s=args.cycle_s,
                threads=args.wrk_threads,
            )
            foreign = meter.foreign_cores()
            time.sleep(args.idle_s)  # in-flight work drains before the reading
            sample = _sample(server, round_no, phase, time.monotonic() - started, load, foreign)
            soak.samples.append(sample)
            print(_sample_line(sample), flush=True)
    soak.end_rest = _rest(server, soak.start_fds, args.rest_s, started)
    rest = soak.end_rest
    print(
        f"at rest after {rest.waited_s:.0f} s: RSS {_mb(rest.rss_mb)} MB, fds {_ints(rest.fds)}",
        flush=True,
    )


def _rest(server: gw.GatewayServer, start_fds: list[int], wait_s: float, started: float) -> Rest:
    """The reading once the fds are back near the start figure (pooled connections to the
    upstreams stay open a while after the load), or after `wait_s`."""
    begun = time.monotonic()
    limit = max(start_fds, default=0) + REST_FDS_SLACK
    while time.monotonic() - begun < wait_s:
        if all(_fds(pid) <= limit for pid in worker_pids(server.pid)):
            break
        time.sleep(0.5)
    now = time.monotonic()
    return Rest(
        at_s=round(now - started, 1),
        waited_s=round(now - begun, 1),
        rss_mb=[round(m.rss_mb, 1) for m in server.memory()],
        fds=[_fds(pid) for pid in worker_pids(server.pid)],
    )


def _script(workdir: Path, phase: Phase) -> Path:
    """A fresh wrk script per phase: its own nonce keeps unique prompts unique."""
    script = workdir / f"soak-{phase.name}.lua"
    text = lua_script(
        phase.body,
        gw.BENCH_KEY,
        unique=phase.unique,
        count_events=phase.stream,
        nonce=f"s{time.time_ns()}",
    )
    script.write_text(text)
    return script


def _sample(
    server: gw.GatewayServer,
    round_no: int,
    phase: Phase,
    at_s: float,
    load: LoadResult,
    foreign: float,
) -> Sample:
    memory = server.memory()
    return Sample(
        round=round_no,
        phase=phase.name,
        at_s=round(at_s, 1),
        load=load,
        foreign_cores=round(foreign, 3),
        rss_mb=[round(m.rss_mb, 1) for m in memory],
        peak_rss_mb=[round(m.peak_rss_mb, 1) for m in memory],
        fds=[_fds(pid) for pid in worker_pids(server.pid)],
        anon_mb=[round(m.anon_mb, 1) for m in memory],
        file_mb=[round(m.file_mb, 1) for m in memory],
    )


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _mb(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values) or "-"


def _ints(values: list[int]) -> str:
    return "/".join(str(v) for v in values) or "-"


def _errors(load: LoadResult) -> int:
    """Failed requests: wrk's errors plus streams that ended without [DONE]."""
    return load.errors + load.incomplete_streams


def _sample_line(s: Sample) -> str:
    load = s.load
    return (
        f"round {s.round:<2} {s.phase:<8} c={load.connections:<4} {load.rps:>8.0f} req/s  "
        f"requests {load.requests:<7} errors {_errors(load):<3} RSS {_mb(s.rss_mb)} MB "
        f"(peak {_mb(s.peak_rss_mb)}; anon {_mb(s.anon_mb)}, files {_mb(s.file_mb)})  "
        f"fds {_ints(s.fds)}  busy {s.foreign_cores:.2f}  "
        f"t={s.at_s:.0f}s"
    )


def summarise(soak: Soak) -> dict[str, Any]:
    """The figures of the summary, per worker; empty when no round completed."""
    samples = soak.samples
    if not samples:
        return {}
    per_round = soak.phases_per_round
    first = samples[min(per_round, len(samples)) - 1]  # the first round's end
    plateau = samples[min(PLATEAU_ROUND * per_round, len(samples)) - 1]
    end: Sample | Rest = soak.end_rest or samples[-1]  # the last phase's, when cut short
    workers = range(min(len(plateau.rss_mb), len(end.rss_mb)))
    growth = [end.rss_mb[w] - plateau.rss_mb[w] for w in workers]
    allowed = [max(GROWTH_FLOOR_MB, GROWTH_SHARE * plateau.rss_mb[w]) for w in workers]
    hours = (end.at_s - plateau.at_s) / 3600
    requests = sum(s.load.requests for s in samples)
    errors = sum(_errors(s.load) for s in samples)
    last_round = samples[-1].round
    rounds = sum(1 for r in range(1, last_round + 1) if _count(samples, r) == per_round)
    complete = rounds >= MIN_ROUNDS
    flat = all(g <= a for g, a in zip(growth, allowed, strict=True))
    return {
        "rounds": rounds,
        "load_s": samples[-1].at_s,
        "rest_rss_mb": soak.rest_rss_mb,
        "peak_rss_mb": [max(s.peak_rss_mb[w] for s in samples) for w in workers],
        "round1_rss_mb": first.rss_mb,
        "plateau_rss_mb": plateau.rss_mb,
        "end_rss_mb": end.rss_mb,
        "growth_mb": [round(g, 1) for g in growth],
        "growth_mb_per_hour": [round(g / hours, 1) if hours > 0 else None for g in growth],
        "allowed_growth_mb": [round(a, 1) for a in allowed],
        "start_fds": soak.start_fds,
        "end_fds": end.fds,
        "requests": requests,
        "errors": errors,
        "verdict": "no growth" if complete and flat and errors == 0 else "GROWTH",
    }


def _count(samples: list[Sample], round_no: int) -> int:
    return sum(1 for s in samples if s.round == round_no)


def summary_lines(soak: Soak, summary: dict[str, Any], workers: int) -> list[str]:
    if not summary:
        return ["memory soak summary: no phase completed", *soak.problems]
    per_hour = "/".join("-" if v is None else f"{v:+.1f}" for v in summary["growth_mb_per_hour"])
    peak_ok = all(v < RSS_TARGET_MB for v in summary["peak_rss_mb"] + summary["rest_rss_mb"])
    verdict = summary["verdict"]
    if summary["rounds"] < MIN_ROUNDS:
        verdict += f" (only {summary['rounds']} whole round(s): too short to tell)"
    elif summary["errors"]:
        verdict += f" ({summary['errors']} failed requests)"
    return [
        f"memory soak summary ({workers} worker(s), {summary['rounds']} rounds, "
        f"{summary['load_s'] / 60:.1f} min of load; RSS per worker):",
        f"  RSS at rest before load   {_mb(summary['rest_rss_mb'])} MB",
        f"  RSS peak                  {_mb(summary['peak_rss_mb'])} MB",
        f"  RSS after round 1         {_mb(summary['round1_rss_mb'])} MB",
        f"  RSS plateau (round {PLATEAU_ROUND})     {_mb(summary['plateau_rss_mb'])} MB",
        f"  RSS at end                {_mb(summary['end_rss_mb'])} MB",
        f"  growth plateau -> end     {'/'.join(f'{g:+.1f}' for g in summary['growth_mb'])} MB "
        f"({per_hour} MB/h; allowed {_mb(summary['allowed_growth_mb'])} MB)",
        f"  open fds start / end      {_ints(summary['start_fds'])} / {_ints(summary['end_fds'])}",
        f"  requests / errors         {summary['requests']} / {summary['errors']}",
        f"  target RSS < {RSS_TARGET_MB:.0f} MB per worker (rest and peak): "
        + ("ok" if peak_ok else "MISSED"),
        *(f"  PROBLEM: {p}" for p in soak.problems),
        f"verdict: {verdict}",
    ]


def _write_json(
    path: Path,
    info: dict[str, object],
    args: argparse.Namespace,
    soak: Soak,
    summary: dict[str, Any],
) -> None:
    settings = {
        "minutes": args.minutes,
        "cycle_s": args.cycle_s,
        "idle_s": args.idle_s,
        "rest_s": args.rest_s,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "streams": soak.stream_connections,
        "wrk_threads": args.wrk_threads,
    }
    data = {
        "machine": info,
        "settings": settings,
        "summary": summary,
        "samples": [{**asdict(s), "load": s.load.to_json()} for s in soak.samples],
        "end_rest": asdict(soak.end_rest) if soak.end_rest else None,
        "problems": soak.problems,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
