"""What the request log and spend ledger cost per request, measured without a load.

    .venv/bin/python -m bench.records [--rows 3000] [--rounds 20] [--database URL]
        [--instructions]

Inside a loaded gateway (`bench.compare --scenarios realistic realistic-no-records`)
the records are a few percent of the CPU, and on a shared VM the rounds of the same
code differ by more than that. Here `RequestRecords` runs alone, on an event loop, as
in a gateway serving `--rows` requests per second: each round adds that many finished
requests (one `add` each, as the middleware does after an answer) and then writes them
as one flush of the writer task (the embedded SQLite file in a temporary directory, or
`--database`, migrated first). Per request, medians over the rounds after a warm-up:
the CPU time of `add` (on the request path), the event loop thread's part of the flush,
and the other threads' part (aiosqlite's connection threads).

`--instructions` counts instead of timing: the same rounds run under `valgrind
--tool=callgrind`, with the requests of every round made before the counters are
zeroed, so what is counted is `add` and the flushes, every thread's user-space
instructions, per request. These repeat where CPU times on a shared VM do not, and
compare with `bench.instructions`' figure for a whole request; system calls are not
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.instructions import callgrind_control, callgrind_dump
from gateway.config import DatabaseConfig, Deployment
from gateway.config.pricing import Prices
from gateway.context import RequestContext
from gateway.ids import new_id
from gateway.records import RequestRecords, create_engine
from gateway.records.migrate import upgrade
from gateway.telemetry import Metrics
from gateway.types import Usage

DEPLOYMENT = Deployment(
    id="nginx/bench-model",
    name="bench-model",
    provider="nginx",
    kind="openai",
    model="bench-model",
    mode="chat",
    prices=Prices(0.15, 0.6),
    context_window_tokens=128_000,
    max_output_tokens=None,
    capabilities=frozenset(),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.records")
    parser.add_argument("--rows", type=int, default=3000, help="requests per flush")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database", help="SQLAlchemy URL (default: a new SQLite file)")
    parser.add_argument(
        "--instructions", action="store_true", help="count them under callgrind instead"
    )
    parser.add_argument("--callgrind-out", type=Path, help=argparse.SUPPRESS)  # its child
    args = parser.parse_args(argv)
    if args.instructions:
        return _run_under_callgrind(args)
    with tempfile.TemporaryDirectory(prefix="gateway-records-") as tmp:
        url = args.database or f"sqlite+aiosqlite:///{Path(tmp) / 'gateway.db'}"
        config = DatabaseConfig(url=url, batch_rows=max(args.rows, 1))
        if args.callgrind_out is not None:
            counted = asyncio.run(_count(config, args.rows, args.rounds, args.callgrind_out))
            print(
                f"{args.rows} rows per flush, {args.rounds} rounds: add and flush "
                f"{counted:,.0f} instructions per request",
                flush=True,
            )
            return 0
        add_us, loop_us, threads_us = asyncio.run(_measure(config, args.rows, args.rounds))
    print(
        f"{args.rows} rows per flush, medians of {args.rounds} rounds, per request: "
        f"add {add_us:.2f} us, flush {loop_us + threads_us:.2f} us (event loop "
        f"{loop_us:.2f}, other threads {threads_us:.2f}), total "
        f"{add_us + loop_us + threads_us:.2f} us",
        flush=True,
    )
    return 0


def _run_under_callgrind(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        print("valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gateway-records-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        cmd += ["-m", "bench.records", "--rows", str(args.rows), "--rounds", str(args.rounds)]
        cmd += ["--callgrind-out", str(out)]
        cmd += ["--database", args.database] if args.database else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stdout + done.stderr[-4000:], file=sys.stderr)
        return done.returncode
    print(done.stdout.strip(), flush=True)
    return 0


@asynccontextmanager
async def _records(config: DatabaseConfig) -> AsyncIterator[RequestRecords]:
    await upgrade(config)
    engine = create_engine(config)
    metrics = Metrics(CollectorRegistry())
    records = RequestRecords(engine, config, {DEPLOYMENT.id: DEPLOYMENT}, metrics)
    try:
        yield records
    finally:
        await records.aclose()
        await engine.dispose()


async def _round(records: RequestRecords, finished: list[RequestContext]) -> tuple[float, ...]:
    """Adds the requests, then flushes them: (add, the flush on this thread, on others)
    in CPU seconds."""
    started = time.thread_time()
    for ctx in finished:
        records.add(ctx)
    add_s = time.thread_time() - started
    before = _threads_cpu_s()
    while records.pending():
        if not await records.flush():
            raise RuntimeError("the database refused a batch")
    after = _threads_cpu_s()
    return add_s, after[0] - before[0], after[1] - before[1]


async def _measure(config: DatabaseConfig, rows: int, rounds: int) -> tuple[float, ...]:
    samples: list[tuple[float, ...]] = []
    async with _records(config) as records:
        await _round(records, [_finished() for _ in range(rows)])  # warms up
        for _ in range(rounds):
            samples.append(await _round(records, [_finished() for _ in range(rows)]))
    return tuple(statistics.median(s[i] for s in samples) * 1e6 / rows for i in range(3))


async def _count(config: DatabaseConfig, rows: int, rounds: int, out: Path) -> float:
    """Run under callgrind: instructions per request of the measured rounds' adds and
    flushes (their requests made before counting starts)."""
    async with _records(config) as records:
        await _round(records, [_finished() for _ in range(rows)])  # warms up
        made = [[_finished() for _ in range(rows)] for _ in range(rounds)]
        callgrind_control("-z", os.getpid())
        for finished in made:
            await _round(records, finished)
        return callgrind_dump(os.getpid(), out) / (rounds * rows)


def _finished() -> RequestContext:
    """A request as `realistic` finishes one: a key with a team, a routed miss, usage."""
    ctx = RequestContext(request_id=new_id(), endpoint="chat")
    ctx.route, ctx.policy, ctx.deployment_id = "bench", "cheapest", DEPLOYMENT.id
    ctx.provider, ctx.model, ctx.attempts, ctx.cache = "nginx", "bench-model", 1, "MISS"
    ctx.key_id, ctx.key_name, ctx.team = "config:bench", "bench", "bench"
    ctx.usage = Usage(120, 40)
    ctx.cost_usd = 0.000042
    return ctx


def _threads_cpu_s() -> tuple[float, float]:
    """CPU seconds of this thread, and of the process's other threads (the process's
    time less this thread's: both clocks count nanoseconds, where /proc counts ticks)."""
    mine = time.thread_time()
    return mine, time.process_time() - mine


if __name__ == "__main__":
    sys.exit(main())
