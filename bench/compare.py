"""Two or more `realistic` scenarios against each other, in interleaved rounds.

    .venv/bin/python -m bench.compare [--scenarios realistic realistic-limits]
        [--concurrency 1 64] [--rounds 10] [--duration-s 4]

`bench.run` measures scenarios one after the other: on a shared VM whose speed drifts
by a fifth within minutes, the difference between two scenarios measured a few
minutes apart is mostly that drift. Here every scenario's gateway runs at once (one
nginx upstream, one Redis, a SQLite file each) and each round drives wrk through each
of them in turn, a few seconds each, the order turned by one each round (whichever
runs first in a round seemed favoured: without turning, the same config
measured twice came out 2.7% cheaper in the first place); after a warm-up round,
the first scenario is the reference and each other is compared with it round by round:
the median of the rounds' CPU-per-request ratios and of their p50 differences is what a
slower or faster machine phase changes least. A gateway's CPU is read `--settle-s` after
its wrk ends, so the background work its requests leave (the request log's last flush,
`database.flush_interval_s` 1 s) is counted with them. The issue targets (CPU per
request within a percentage of `realistic`, added p50 at c=1) are read from these lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import gateway as gw
from bench.nginx import CHAT_PATH, start_nginx
from bench.procs import ProcessGroup, tree_cpu_s
from bench.report import describe_machine, machine
from bench.scenarios import SCENARIOS
from bench.wrk import chat_body, lua_script, missing_tools, run_wrk


@dataclass
class Series:
    """One scenario's rounds at one concurrency: (CPU µs per request, p50 ms, req/s)."""

    name: str
    rounds: list[tuple[float, float, float]] = field(default_factory=list)

    def median(self, index: int) -> float:
        return statistics.median(r[index] for r in self.rounds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    realistic = [n for n, s in SCENARIOS.items() if s.variant == "realistic" and not s.stream]
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument(
        "--scenarios", nargs="+", choices=realistic, default=["realistic", "realistic-limits"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--rounds", type=int, default=10, help="measured, after a warm-up")
    parser.add_argument("--duration-s", type=int, default=4, help="seconds per scenario per round")
    parser.add_argument(
        "--settle-s", type=float, default=1.5, help="after wrk, before the CPU is read"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.scenarios) < 2:
        print("compare needs two scenarios or more", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing or gw.redis_binary() is None:
        print(missing or "redis-server not found", file=sys.stderr)
        return 2
    print(describe_machine(machine(gw.REPO)), flush=True)
    with tempfile.TemporaryDirectory(prefix="gateway-compare-") as tmp:
        workdir = Path(tmp)
        group = ProcessGroup()
        try:
            upstream = start_nginx(group, workdir, gw.MODEL, None)
            redis_url = gw.start_redis(group, workdir)
            servers = []
            for name in args.scenarios:
                features = SCENARIOS[name].features or gw.FEATURES
                config = gw.realistic_config(upstream, redis_url, features)
                servers.append((name, gw.start_gateway(group, workdir, name, config, 1)))
            for connections in args.concurrency:
                series = _rounds(
                    servers, workdir, connections, args.rounds, args.duration_s, args.settle_s
                )
                _report(series, connections)
        finally:
            group.close()
    return 0


def _rounds(
    servers: list[tuple[str, gw.GatewayServer]],
    workdir: Path,
    connections: int,
    rounds: int,
    duration_s: int,
    settle_s: float,
) -> list[Series]:
    body = chat_body(gw.ROUTE, stream=False, unique=True)
    series = [Series(name) for name, _ in servers]
    pairs = list(zip(servers, series, strict=True))
    for round_index in range(rounds + 1):  # round 0 warms up
        turn = round_index % len(pairs)
        for (name, server), out in pairs[turn:] + pairs[:turn]:
            script = workdir / f"{name}.lua"
            nonce = f"r{time.time_ns()}"  # unique bodies across rounds: every request a miss
            script.write_text(lua_script(body, gw.BENCH_KEY, unique=True, nonce=nonce))
            cpu_before_s = tree_cpu_s(server.pid)
            load, _ = run_wrk(
                server.url + CHAT_PATH, script, connections=connections, duration_s=duration_s
            )
            if load.errors or not load.requests:
                raise RuntimeError(f"{name}: {load.errors} errors in {load.requests} requests")
            time.sleep(settle_s)
            cpu_us = (tree_cpu_s(server.pid) - cpu_before_s) * 1e6 / load.requests
            if round_index:
                out.rounds.append((cpu_us, load.p50_ms, load.rps))
    return series


def _report(series: list[Series], connections: int) -> None:
    for s in series:
        print(
            f"  {s.name:<22} c={connections:<3} CPU/request {s.median(0):6.0f} us  "
            f"p50 {s.median(1):.3f} ms  {s.median(2):8.0f} req/s  (medians of {len(s.rounds)})",
            flush=True,
        )
    reference = series[0]
    for s in series[1:]:
        ratios = [a[0] / b[0] for a, b in zip(s.rounds, reference.rounds, strict=True)]
        added = [a[1] - b[1] for a, b in zip(s.rounds, reference.rounds, strict=True)]
        quartile1, _, quartile3 = statistics.quantiles(ratios, n=4)
        print(
            f"  {s.name} against {reference.name}, c={connections}: CPU per request "
            f"{statistics.median(ratios) - 1:+.1%} (middle half of the rounds "
            f"{quartile1 - 1:+.1%} to {quartile3 - 1:+.1%}, all {min(ratios) - 1:+.0%} to "
            f"{max(ratios) - 1:+.0%}), p50 {statistics.median(added):+.3f} ms (rounds "
            f"{min(added):+.3f} to {max(added):+.3f})",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
