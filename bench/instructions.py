"""Instructions per request under callgrind: a before/after figure that does not drift.

    .venv/bin/python -m bench.instructions [--config chat|realistic|realistic-limits|
        realistic-no-records|stream]
        [--requests 300] [--src DIR ...]

On a shared VM, wall-clock and CPU-time figures move by a fifth between runs; the
instructions the gateway process executes per request repeat to about 0.2%. Each
`--src` tree (default: this one) runs `gateway serve` under `valgrind --tool=callgrind`
with the `bench` config of that name, against nginx (and Redis for `realistic`). After
300 warm-up requests the counters are zeroed; an idle interval measures what the
process executes on its own (timers, the event loop's polling: the rate is subtracted);
then `--requests` sequential POSTs go through one keep-alive connection, and the
process has 2 s more for what they leave to do in the background (the request log's
flush). The figure counts user-space instructions of every thread, not system calls, so a
change that saves a write call shows in the CPU figures of `bench.run`, not here. Needs
valgrind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import gateway as gw
from bench.nginx import CHAT_PATH, start_nginx
from bench.procs import ProcessGroup, free_port, wait_for_http, wait_for_port

WARMUP_REQUESTS = 300
SETTLE_S = 5.0  # after the warm-up: its background work (flushes, batches) drains
AFTER_S = 2.0  # after the measured requests: the same, counted (database.flush_interval_s 1)
STARTUP_S = 300.0  # under callgrind the gateway starts some 50 times slower


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument(
        "--config",
        choices=("chat", "realistic", "realistic-limits", "realistic-no-records", "stream"),
        default="chat",
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--src", type=Path, action="append", help="source tree (repeatable)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    for src in args.src or [gw.REPO]:
        per_request = measure(src.resolve(), args.config, args.requests, args.idle_s)
        print(f"{src}: {args.config}: {per_request:,.0f} instructions per request", flush=True)
    return 0


def measure(src: Path, config_name: str, requests: int, idle_s: float) -> float:
    with tempfile.TemporaryDirectory(prefix="gateway-instructions-") as tmp:
        workdir = Path(tmp)
        group = ProcessGroup()
        try:
            upstream = start_nginx(group, workdir, gw.MODEL)
            if config_name.startswith("realistic"):  # `-limits`: rpm and tpm on its key
                features = gw.FEATURES | ({"limits"} if config_name.endswith("-limits") else set())
                if config_name.endswith("-no-records"):  # no request log, no ledger
                    features -= {"records"}
                config = gw.realistic_config(upstream, gw.start_redis(group, workdir), features)
                model, key = gw.ROUTE, gw.BENCH_KEY
            elif config_name == "stream":  # the minimal config, its SSE model, streamed
                config, model, key = gw.minimal_config(upstream), gw.STREAM_MODEL, None
            else:
                config, model, key = gw.minimal_config(upstream), gw.MODEL, None
            port, pid, out = _start_under_callgrind(group, workdir, src, config)
            client = _Client(port, model, key, stream=config_name == "stream")
            client.send(WARMUP_REQUESTS, "warm-up")
            time.sleep(SETTLE_S)
            callgrind_control("-z", pid)
            time.sleep(idle_s)
            idle = callgrind_dump(pid, out)
            started = time.monotonic()
            client.send(requests, "measured")
            time.sleep(AFTER_S)  # the writer's next flush: those requests' rows count
            busy = callgrind_dump(pid, out)
            wall_s = time.monotonic() - started
            return (busy - idle / idle_s * wall_s) / requests
        finally:
            group.close()


def _start_under_callgrind(
    group: ProcessGroup, workdir: Path, src: Path, config: dict[str, object]
) -> tuple[int, int, Path]:
    config = gw.with_database(dict(config), src, workdir / "gateway.db")
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port, out = free_port(), workdir / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    cmd += ["-m", "gateway", "serve", "--config", str(config_path), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = group.start("gateway", cmd, workdir / "gateway.log", env=env, cwd=src)
    wait_for_port(port, proc, STARTUP_S, "the gateway under callgrind")
    wait_for_http(("127.0.0.1", port), "/readyz", STARTUP_S)
    return port, proc.pid, out


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def callgrind_dump(pid: int, out: Path) -> int:
    """Dumps the counts since the last dump (or zeroing): a new part file; its total."""
    before = set(out.parent.glob(f"{out.name}.*"))
    callgrind_control("-d", pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for part in set(out.parent.glob(f"{out.name}.*")) - before:
            total = _total(part)
            if total is not None:
                return total
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def _total(part: Path) -> int | None:
    for line in part.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None  # still being written


class _Client:
    """Sequential POSTs, one keep-alive connection per batch (the server closes idle
    ones after a few seconds); unique prompts (cache misses)."""

    def __init__(self, port: int, model: str, key: str | None, stream: bool = False) -> None:
        self._port = port
        self._model = model
        self._stream = stream
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"

    def send(self, count: int, label: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=120)
        try:
            self._send(connection, count, label)
        finally:
            connection.close()

    def _send(self, connection: http.client.HTTPConnection, count: int, label: str) -> None:
        for n in range(count):
            message = {"role": "user", "content": f"Say hello ({label} {n})"}
            fields = {"model": self._model, "messages": [message], "stream": self._stream}
            body = json.dumps(fields)
            connection.request("POST", CHAT_PATH, body, self._headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200 or (self._stream and not data.endswith(b"[DONE]\n\n")):
                raise RuntimeError(f"the gateway answered {response.status}: {data[:300]!r}")


if __name__ == "__main__":
    sys.exit(main())
