"""The access log batches its lines into one write, without reordering other log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.telemetry.logs import AccessLog, JSONFormatter, configure_logging


def _logger(path: Path, name: str) -> tuple[logging.Logger, logging.StreamHandler]:  # type: ignore[type-arg]
    stream = path.open("w", buffering=1, encoding="utf-8")  # line-buffered, like stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


async def _three_lines_then_wait(access: AccessLog, path: Path) -> tuple[str, str]:
    """What the log file held right after three access lines, and once flushed."""
    for n in range(3):
        access.write({"event": "access", "n": n})
    before = path.read_text()
    await asyncio.sleep(AccessLog.FLUSH_AFTER_S * 3)
    return before, path.read_text()


def test_lines_are_flushed_together_after_a_short_delay(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger, handler = _logger(path, "test.access.batch")
    try:
        before, after = asyncio.run(_three_lines_then_wait(AccessLog(logger), path))
    finally:
        handler.stream.close()
    assert before == ""  # nothing written per line
    assert [json.loads(line)["n"] for line in after.splitlines()] == [0, 1, 2]


def test_other_log_lines_keep_their_place(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    logger, handler = _logger(path, "test.access.mixed")
    access = AccessLog(logger)

    async def run() -> None:
        access.write({"event": "access", "n": 1})
        logger.warning("between")  # through the text layer, which flushes the buffer
        access.write({"event": "access", "n": 2})
        access.flush()

    try:
        asyncio.run(run())
    finally:
        handler.stream.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line.get("n", line.get("msg")) for line in lines] == [1, "between", 2]


def test_without_an_event_loop_a_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "sync.log"
    logger, handler = _logger(path, "test.access.sync")
    try:
        AccessLog(logger).write({"event": "access", "n": 7})
        assert json.loads(path.read_text())["n"] == 7
    finally:
        handler.stream.close()


def test_lines_are_batched_over_real_stderr(tmp_path: Path, monkeypatch: Any) -> None:
    """stderr as Python makes it when it is not a terminal: a text layer straight over
    the unbuffered file. The access log still batches (one write, not one per line)."""
    path = tmp_path / "stderr.log"
    raw = open(path, "wb", buffering=0)  # noqa: SIM115  # closed below
    stderr_like = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True, write_through=True)
    monkeypatch.setattr(sys, "stderr", stderr_like)
    saved = {n: logging.getLogger(n).handlers[:] for n in ("gateway", "gateway.access")}
    configure_logging("info")
    try:
        before, after = asyncio.run(_three_lines_then_wait(AccessLog(), path))
        logging.getLogger("gateway").warning("after")
        last = path.read_text().splitlines()[-1]
    finally:
        for name, handlers in saved.items():
            logging.getLogger(name).handlers[:] = handlers
        raw.close()
    assert before == ""
    assert [json.loads(line)["n"] for line in after.splitlines()] == [0, 1, 2]
    assert json.loads(last)["msg"] == "after"  # other records go out at once
