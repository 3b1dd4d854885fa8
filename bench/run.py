"""Benchmark: the gateway against a fast local upstream, with the upstream as the baseline.

    .venv/bin/python -m bench.run [--scenarios chat realistic stream] [--duration-s 10]
                                  [--compare-url http://127.0.0.1:4000/v1 --compare-key K]

Starts nginx as a fixed-answer OpenAI upstream, then per scenario the gateway as a
real process (`python -m gateway serve`) with a generated config, probes every target
once, and drives wrk at each concurrency against the upstream directly, through the
gateway and (optionally) through another OpenAI-compatible gateway. Prints a table
and writes a JSON result file under bench/results/. Every process it started is
stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from bench import gateway as gw
from bench.floor import start_floor
from bench.nginx import CHAT_PATH, Upstream, start_nginx
from bench.probe import probe
from bench.procs import CpuMeter, ProcessGroup, tree_cpu_s
from bench.profile import profiled_module, profiler_available, summarise
from bench.report import Run, ScenarioResult, describe_machine, machine, table, write_json
from bench.scenarios import DEFAULT_SCENARIOS, SCENARIOS, Pacing, Scenario
from bench.slow_upstream import start_paced
from bench.wrk import chat_body, lua_script, missing_tools, run_wrk

# Targets whose load does not depend on the scenario's gateway config: measured once.
_SHARED = ("direct", "floor")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # direct | floor | gateway | baseline | compare
    url: str
    api_key: str | None
    body: str
    pid: int | None = None  # a process of ours: its CPU per request is recorded


@dataclass
class Bench:
    """Everything shared by the scenarios of one run."""

    args: argparse.Namespace
    workdir: Path
    group: ProcessGroup
    upstream: Upstream  # nginx
    redis_url: str | None
    shared_runs: dict[tuple[str, str, int], Run]  # direct and floor runs, by upstream load
    paced: dict[Pacing, Upstream]
    floors: dict[int, tuple[int, int]]  # upstream port -> the floor's (port, pid)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(DEFAULT_SCENARIOS)
    )
    parser.add_argument("--duration-s", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup-s", type=int, default=1, help="unmeasured run first; 0: none")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument(
        "--transport",
        choices=["native", "aiohttp", "httpx", "httpx-aiohttp"],
        default=None,
        help="the gateway's server.upstream_transport (default: the gateway's own default)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="measured runs each; best kept")
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the bare uvicorn + aiohttp pass-through (bench.floor) rows",
    )
    parser.add_argument("--compare-url", help="another gateway's base URL, e.g. http://h:p/v1")
    parser.add_argument("--compare-key", help="bearer key for --compare-url")
    parser.add_argument(
        "--compare-model",
        default=gw.MODEL,
        help="model for --compare-url, routed to http://127.0.0.1:<upstream-port>/v1",
    )
    parser.add_argument(
        "--compare-stream-model",
        default=gw.STREAM_MODEL,
        help="model for --compare-url in stream scenarios, routed to .../sse/v1",
    )
    parser.add_argument(
        "--upstream-port", type=int, help="fixed nginx port (to point a compared gateway at it)"
    )
    parser.add_argument(
        "--gateway-src",
        type=Path,
        default=gw.REPO,
        help="run the gateway from this source tree (e.g. an unpacked `git archive`)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run a gateway from this source tree (e.g. an unpacked `git archive` of "
        "an earlier commit) with the same config, measured interleaved with the gateway",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, profile a gateway under the highest load (pyinstrument)",
    )
    parser.add_argument("--output", type=Path, help="JSON result file (default bench/results/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    info = machine(args.gateway_src)
    print(_settings_line(args))
    print(describe_machine(info), flush=True)
    results: list[ScenarioResult] = []
    error: BaseException | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # The pid in the name tells this run's processes from another run's.
        with tempfile.TemporaryDirectory(prefix=f"gateway-bench-{os.getpid()}-") as tmp:
            _run_all(args, Path(tmp), results)
    except (Exception, KeyboardInterrupt) as exc:
        error = exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(table(results))
    output = args.output or RESULTS_DIR / f"{datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(output, info, _settings(args), results)
    print(f"\nresults: {output}")
    if error is not None:
        print(f"benchmark aborted: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_all(args: argparse.Namespace, workdir: Path, results: list[ScenarioResult]) -> None:
    group = ProcessGroup()
    try:
        upstream = start_nginx(group, workdir, gw.MODEL, args.upstream_port)
        redis_url = None
        realistic = any(SCENARIOS[n].variant == "realistic" for n in args.scenarios)
        if realistic and gw.redis_binary() is not None:
            redis_url = gw.start_redis(group, workdir)
        bench = Bench(args, workdir, group, upstream, redis_url, {}, {}, {})
        for name in args.scenarios:
            scenario = SCENARIOS[name]
            result = ScenarioResult(scenario.name, scenario.description, scenario.stream)
            result.stream_s = scenario.pacing.stream_s if scenario.pacing else None
            results.append(result)
            _run_scenario(bench, scenario, result)
    finally:
        group.close()


def _upstream_for(bench: Bench, scenario: Scenario) -> Upstream:
    pacing = scenario.pacing
    if pacing is None:
        return bench.upstream
    if pacing not in bench.paced:
        bench.paced[pacing] = start_paced(
            bench.group, bench.workdir, pacing.ttft_ms, pacing.chunks, pacing.interval_ms
        )
    return bench.paced[pacing]


def _run_scenario(bench: Bench, scenario: Scenario, result: ScenarioResult) -> None:
    up = _upstream_for(bench, scenario)
    if scenario.variant == "minimal":
        config = gw.minimal_config(up)
        model, key = (gw.STREAM_MODEL if scenario.stream else gw.MODEL), None
    else:
        features = gw.FEATURES if scenario.features is None else scenario.features
        config = gw.realistic_config(up, bench.redis_url, features)
        model, key = gw.ROUTE, (gw.BENCH_KEY if "key" in features else None)
        if bench.redis_url is None:
            result.problems.append("redis-server absent: ran without Redis")
    args = bench.args
    if args.transport is not None:
        config = gw.with_transport(config, args.transport)
    server = gw.start_gateway(
        bench.group, bench.workdir, scenario.name, config, args.workers, args.gateway_src.resolve()
    )
    baseline = None
    try:
        if args.baseline_src:
            src = args.baseline_src.resolve()
            name = f"{scenario.name}-baseline"
            baseline = gw.start_gateway(bench.group, bench.workdir, name, config, args.workers, src)
        targets = _targets(bench, scenario, up, server, model, key, result, baseline)
        result.rest_memory = server.memory()
        for connections in scenario.connections or args.concurrency:
            result.runs += _measure(bench, scenario, targets, connections)
        result.peak_memory = server.memory()
        time.sleep(1.0)  # let in-flight work drain before the "after load" reading
        result.after_memory = server.memory()
        if args.profile:
            gateway = next(t for t in targets if t.name == "gateway")
            result.profile = _profile(bench, scenario, config, gateway)
    finally:
        bench.group.stop_pid(server.pid)
        if baseline is not None:
            bench.group.stop_pid(baseline.pid)


def _targets(
    bench: Bench,
    scenario: Scenario,
    upstream: Upstream,
    server: gw.GatewayServer,
    model: str,
    key: str | None,
    result: ScenarioResult,
    baseline: gw.GatewayServer | None,
) -> list[Target]:
    unique, stream = scenario.unique_bodies, scenario.stream
    base = upstream.stream_base_url if stream else upstream.base_url
    body = chat_body(model, stream=stream, unique=unique)
    targets = [
        Target("direct", base + "/chat/completions", None, body),
        Target("gateway", server.url + CHAT_PATH, key, body, server.pid),
    ]
    if baseline is not None:
        targets.append(Target("baseline", baseline.url + CHAT_PATH, key, body, baseline.pid))
    args = bench.args
    if not args.no_floor:
        port, pid = _floor_for(bench, upstream)
        path = urlsplit(targets[0].url).path
        targets.insert(1, Target("floor", f"http://127.0.0.1:{port}{path}", None, body, pid))
    for target in targets:
        problem = probe(target.url, target.body, target.api_key, stream=stream)
        if problem is not None:
            raise RuntimeError(f"{target.name} answered wrongly: {problem}")
    if args.compare_url and scenario.pacing is not None:
        result.problems.append("compare target skipped: the paced upstream's port is private")
    elif args.compare_url:
        compare_model = args.compare_stream_model if stream else args.compare_model
        body = chat_body(compare_model, stream=stream, unique=unique)
        compare = Target(
            "compare", args.compare_url.rstrip("/") + "/chat/completions", args.compare_key, body
        )
        problem = probe(compare.url, compare.body, compare.api_key, stream=stream)
        if problem is None:
            targets.append(compare)
        else:
            result.problems.append(f"compare target skipped: {problem}")
    return targets


def _floor_for(bench: Bench, upstream: Upstream) -> tuple[int, int]:
    """The bare pass-through in front of this upstream, started once per run."""
    if upstream.port not in bench.floors:
        origin = f"http://127.0.0.1:{upstream.port}"
        bench.floors[upstream.port] = start_floor(bench.group, bench.workdir, origin)
    return bench.floors[upstream.port]


def _measure(
    bench: Bench, scenario: Scenario, targets: list[Target], connections: int
) -> list[Run]:
    """Warm every target up, then `--repeat` rounds over all of them; each keeps its best
    run (highest throughput). Rounds alternate the targets, so a machine whose speed
    drifts (a shared VM) slows them alike instead of whichever ran last.

    A target with a pid also records that process tree's CPU time per request. The
    direct and floor runs depend only on the upstream load: measured once per run.
    """
    upstream_load = (
        scenario.stream,
        scenario.unique_bodies,
        scenario.count_events,
        scenario.pacing,
    )
    load_key = (repr(upstream_load), connections)
    shared = {t.name: bench.shared_runs.get((t.name, *load_key)) for t in targets}
    todo = [t for t in targets if shared.get(t.name) is None]
    args = bench.args
    duration_s, warmup_s = _durations(args, scenario)
    for target in todo if warmup_s > 0 else ():
        script = _script(bench, scenario, target)
        run_wrk(
            target.url,
            script,
            connections=connections,
            duration_s=warmup_s,
            threads=args.wrk_threads,
        )
    best: dict[str, Run] = {}
    for _ in range(max(1, args.repeat)):
        for target in todo:
            run = _run_once(bench, scenario, target, connections, duration_s)
            if target.name not in best or run.load.rps > best[target.name].load.rps:
                best[target.name] = run
    runs = []
    for target in targets:
        run = shared.get(target.name) or best[target.name]
        if target.name in _SHARED:
            bench.shared_runs[(target.name, *load_key)] = run
        _print_run(scenario, run)
        runs.append(run)
    return runs


def _run_once(
    bench: Bench, scenario: Scenario, target: Target, connections: int, duration_s: int
) -> Run:
    meter = CpuMeter()
    cpu_before_s = tree_cpu_s(target.pid) if target.pid else 0.0
    script = _script(bench, scenario, target)
    threads = bench.args.wrk_threads
    load, _ = run_wrk(
        target.url, script, connections=connections, duration_s=duration_s, threads=threads
    )
    run = Run(target.name, target.url, load, meter.foreign_cores())
    if target.pid and load.requests:
        run.cpu_us_per_request = (tree_cpu_s(target.pid) - cpu_before_s) * 1e6 / load.requests
    return run


def _print_run(scenario: Scenario, run: Run) -> None:
    load = run.load
    cpu = f"  cpu {run.cpu_us_per_request:.0f} us/req" if run.cpu_us_per_request else ""
    print(
        f"  {scenario.name:<15} {run.target:<8} c={load.connections:<4} {load.rps:>9.0f} req/s  "
        f"p50 {load.p50_ms:.3f} ms  p99 {load.p99_ms:.3f} ms  errors {load.errors}  "
        f"busy {run.foreign_cores:.2f}{cpu}",
        flush=True,
    )


def _script(bench: Bench, scenario: Scenario, target: Target) -> Path:
    """A fresh wrk script per run: its own nonce keeps unique bodies unique across runs."""
    script = bench.workdir / f"{scenario.name}-{target.name}.lua"
    text = lua_script(
        target.body,
        target.api_key,
        unique=scenario.unique_bodies,
        count_events=scenario.count_events,
        nonce=f"r{time.time_ns()}",
    )
    script.write_text(text)
    return script


def _durations(args: argparse.Namespace, scenario: Scenario) -> tuple[int, int]:
    """(measured, warm-up) seconds; paced streams get several whole streams at least."""
    duration_s, warmup_s = args.duration_s, args.warmup_s
    if scenario.pacing is not None:
        duration_s = max(duration_s, math.ceil(5 * scenario.pacing.stream_s))
        warmup_s = max(warmup_s, math.ceil(scenario.pacing.stream_s)) if warmup_s else 0
    return duration_s, warmup_s


def _profile(bench: Bench, scenario: Scenario, config: dict[str, Any], target: Target) -> list[str]:
    """The same config and load on a second gateway run under pyinstrument (not measured)."""
    if not profiler_available():
        return ["profile skipped: pyinstrument is not installed (pip install -e '.[bench]')"]
    args = bench.args
    session = bench.workdir / f"profile-{scenario.name}.pyisession"
    server = gw.start_gateway(
        bench.group,
        bench.workdir,
        f"{scenario.name}-profiled",
        config,
        1,
        args.gateway_src.resolve(),
        tuple(profiled_module(session)),
    )
    duration_s, _ = _durations(args, scenario)
    try:
        run_wrk(
            server.url + CHAT_PATH,
            _script(bench, scenario, target),
            connections=max(scenario.connections or args.concurrency),
            duration_s=duration_s,
            threads=args.wrk_threads,
        )
    finally:
        # SIGINT: pyinstrument writes the session, which takes a while after a long run.
        bench.group.stop_pid(server.pid, grace_s=120.0)
    if not session.exists():
        return [f"profile failed: no session written; see {server.log_path.name}"]
    # The session itself (tens of MB) goes with the temp dir; the summary is kept.
    try:
        return summarise(session, args.gateway_src)
    except ValueError as exc:  # cut short (the profiled process stopped while writing)
        return [f"profile failed: unreadable session ({type(exc).__name__}: {exc})"]


def _settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "scenarios": args.scenarios,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "transport": args.transport,
        "wrk_threads": args.wrk_threads,
        "repeat": args.repeat,
        "floor": not args.no_floor,
        "compare_url": args.compare_url,
        "baseline_src": str(args.baseline_src) if args.baseline_src else None,
        "gateway_src": str(args.gateway_src),
        "started_at": datetime.now().isoformat(timespec="seconds"),
    }


def _settings_line(args: argparse.Namespace) -> str:
    return (
        f"gateway benchmark: scenarios {', '.join(args.scenarios)}; {args.duration_s} s per run "
        f"(+{args.warmup_s} s warm-up); concurrency {args.concurrency}; "
        f"{args.workers} gateway worker(s), {args.transport or 'default'} upstream transport; "
        f"wrk {args.wrk_threads} thread(s)"
    )


if __name__ == "__main__":
    sys.exit(main())
