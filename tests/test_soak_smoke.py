"""The memory soak runs end to end, prints its summary and stops everything it started."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_smoke import _bench_processes

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="the soak needs nginx and wrk (apt-get install nginx-light wrk)",
)

SUMMARY_LABELS = (
    "RSS at rest before load",
    "RSS peak",
    "RSS after round 1",
    "RSS plateau (round 2)",
    "RSS at end",
    "growth plateau -> end",
    "open fds start / end",
    "requests / errors",
)


def test_soak_runs_three_rounds_and_summarises(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    # 2 s phases: a paced stream takes 1.15 s, so every phase completes some requests.
    cmd = [sys.executable, "-m", "bench.soak", "--minutes", "0.05", "--cycle-s", "2"]
    cmd += ["--idle-s", "0.3", "--rest-s", "1", "--streams", "40", "--output", str(output)]
    with subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the soak still stops what it started
            stdout, stderr = proc.communicate()
            pytest.fail(f"the soak did not finish in time:\n{stdout}{stderr}")

    assert proc.returncode == 0, stdout + stderr
    for label in SUMMARY_LABELS:
        assert f"  {label}" in stdout, (label, stdout)
    assert "\nverdict: " in stdout, stdout

    data = json.loads(output.read_text())
    samples = data["samples"]
    # Three whole rounds at least (round 1, the plateau and a later reading), in order.
    phases = [(s["round"], s["phase"]) for s in samples]
    assert phases[:9] == [(r, p) for r in (1, 2, 3) for p in ("misses", "hits", "streams")]
    for sample in samples:
        load = sample["load"]
        assert load["requests"] > 0, sample
        assert load["errors"] == 0 and load["incomplete_streams"] == 0, sample
        assert len(sample["rss_mb"]) == 1 and sample["rss_mb"][0] > 10
        assert sample["peak_rss_mb"][0] >= sample["rss_mb"][0]
        assert sample["fds"][0] > 0
        if sample["phase"] == "streams":
            assert load["connections"] == 40 and load["events"] > 0
    summary = data["summary"]
    assert summary["rounds"] >= 3
    assert summary["requests"] == sum(s["load"]["requests"] for s in samples)
    end_rest = data["end_rest"]
    assert end_rest["at_s"] >= samples[-1]["at_s"] and end_rest["fds"][0] > 0
    assert summary["end_rss_mb"] == end_rest["rss_mb"] and end_rest["rss_mb"][0] > 10
    assert summary["round1_rss_mb"] == samples[2]["rss_mb"]
    assert summary["plateau_rss_mb"] == samples[5]["rss_mb"]
    assert summary["verdict"] in ("no growth", "GROWTH")
    assert _bench_processes(proc.pid) == []
