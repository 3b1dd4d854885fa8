"""The benchmark harness runs end to end and reports sane numbers (no timing assertions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="the benchmark needs nginx and wrk (apt-get install nginx-light wrk)",
)


def _bench_processes(harness_pid: int) -> list[str]:
    """Command lines of live processes started from that harness run's work dir."""
    marker = f"gateway-bench-{harness_pid}-"
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


def test_bench_runs_reports_a_table_and_stops_everything(tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "bench.run", "--scenarios", "chat", "stream"]
    cmd += ["--duration-s", "1", "--warmup-s", "0", "--concurrency", "1", "8"]
    cmd += ["--output", str(output), "--baseline-src", str(REPO)]
    with subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=100)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the harness still stops what it started
            stdout, stderr = proc.communicate()
            pytest.fail(f"the benchmark did not finish in time:\n{stdout}{stderr}")

    assert proc.returncode == 0, stdout + stderr
    assert "scenario        target" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.startswith(("chat ", "stream "))]
    targets = ("direct", "floor", "gateway", "baseline")
    table_rows = [r for r in rows if r[1] in targets and r[2].isdigit()]
    assert len(table_rows) == 16, stdout
    assert "against the baseline source tree" in stdout
    assert all(float(r[3]) > 0 for r in table_rows), stdout  # req/s

    data = json.loads(output.read_text())
    assert data["machine"]["cores"] >= 1
    for scenario in data["scenarios"]:
        runs = {(r["target"], r["connections"]): r for r in scenario["runs"]}
        assert set(runs) == {(t, c) for t in targets for c in (1, 8)}
        for run in runs.values():
            assert run["requests"] > 0 and run["rps"] > 0
            assert run["errors"] == 0, run
            assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
            if run["target"] != "direct":  # our own processes: their CPU is measured
                assert run["gateway_cpu_us_per_request"] > 0, run
        assert scenario["gateway_memory"]["peak"][0]["peak_rss_mb"] > 10
        assert scenario["problems"] == []
        if scenario["name"] == "stream":
            # nginx sends role, 8 words, finish, usage, [DONE]; the gateway withholds the
            # usage chunk the client did not ask for, and no stream ends without [DONE].
            # The floor (a bare pass-through) relays all of them.
            for (target, _), run in runs.items():
                per_stream = 11 if target in ("gateway", "baseline") else 12
                assert run["events"] == per_stream * run["requests"], run
                assert run["incomplete_streams"] == 0
    assert _bench_processes(proc.pid) == []


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_compare_interleaves_scenarios_and_reports_each_against_the_first() -> None:
    cmd = [sys.executable, "-m", "bench.compare", "--scenarios", "realistic", "realistic-limits"]
    cmd += ["--rounds", "2", "--duration-s", "1", "--concurrency", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    medians = [line for line in done.stdout.splitlines() if "(medians of 2)" in line]
    assert len(medians) == 2, done.stdout
    assert all(float(line.split("CPU/request")[1].split()[0]) > 0 for line in medians)
    assert "realistic-limits against realistic, c=2: CPU per request" in done.stdout


def test_records_reports_the_cost_per_request_of_add_and_flush() -> None:
    cmd = [sys.executable, "-m", "bench.records", "--rows", "50", "--rounds", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("50 rows per flush, medians of 2 rounds, per request: add "), line
    assert float(line.split("total ")[1].split()[0]) > 0, line


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_records_counts_instructions_per_request_under_callgrind() -> None:
    cmd = [sys.executable, "-m", "bench.records", "--rows", "20", "--rounds", "1"]
    cmd += ["--instructions"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("20 rows per flush, 1 rounds: add and flush "), line
    counted = int(line.split("add and flush ")[1].split()[0].replace(",", ""))
    assert 1_000 < counted < 10_000_000, line  # a request's adds and flushes, not the start-up
