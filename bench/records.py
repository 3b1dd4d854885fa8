"""What the request log and spend ledger cost per request, measured without a load.

    .venv/bin/python -m bench.records [--rows 3000] [--rounds 20] [--database URL]

Inside a loaded gateway (`bench.compare --scenarios realistic realistic-no-records`)
the records are a few percent of the CPU, and on a shared VM the rounds of the same
code differ by more than that. Here `RequestRecords` runs alone, on an event loop, as
in a gateway serving `--rows` requests per second: each round adds that many finished
requests (one `add` each, as the middleware does after an answer) and then writes them
as one flush of the writer task (the embedded SQLite file in a temporary directory, or
`--database`, migrated first). Per request, medians over the rounds after a warm-up:
the CPU time of `add` (on the request path), the event loop thread's part of the flush,
and the other threads' part (aiosqlite's connection threads).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gateway-records-") as tmp:
        url = args.database or f"sqlite+aiosqlite:///{Path(tmp) / 'gateway.db'}"
        config = DatabaseConfig(url=url, batch_rows=max(args.rows, 1))
        add_us, loop_us, threads_us = asyncio.run(_measure(config, args.rows, args.rounds))
    print(
        f"{args.rows} rows per flush, medians of {args.rounds} rounds, per request: "
        f"add {add_us:.2f} us, flush {loop_us + threads_us:.2f} us (event loop "
        f"{loop_us:.2f}, other threads {threads_us:.2f}), total "
        f"{add_us + loop_us + threads_us:.2f} us",
        flush=True,
    )
    return 0


async def _measure(config: DatabaseConfig, rows: int, rounds: int) -> tuple[float, ...]:
    await upgrade(config)
    engine = create_engine(config)
    metrics = Metrics(CollectorRegistry())
    records = RequestRecords(engine, config, {DEPLOYMENT.id: DEPLOYMENT}, metrics)
    samples: list[tuple[float, float, float]] = []
    try:
        for round_index in range(rounds + 1):  # round 0 warms up
            finished = [_finished() for _ in range(rows)]
            started = time.thread_time()
            for ctx in finished:
                records.add(ctx)
            add_s = time.thread_time() - started
            before = _threads_cpu_s()
            while records.pending():
                if not await records.flush():
                    raise RuntimeError("the database refused a batch")
            after = _threads_cpu_s()
            if round_index:
                loop_s, others_s = (b - a for a, b in zip(before, after, strict=True))
                samples.append((add_s, loop_s, others_s))
    finally:
        await records.aclose()
        await engine.dispose()
    return tuple(statistics.median(s[i] for s in samples) * 1e6 / rows for i in range(3))


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
