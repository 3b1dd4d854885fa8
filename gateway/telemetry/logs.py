"""Structured JSON logs: one object per line, no prompts or keys."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from typing import BinaryIO, TextIO

from gateway import jsonutil

_STDERR_BUFFER_BYTES = 64 * 1024


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        else:
            payload["msg"] = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            payload["error"] = record.exc_info[0].__name__  # the type only: no traceback text
        return jsonutil.dumps(payload).decode()


class AccessLog:
    """One JSON line per request, written straight to the access logger's stream.

    The same line `JSONFormatter` would make, without a LogRecord, a handler lock and
    a formatter call per request (a few percent of the gateway's CPU under load).
    Lines go into the stream's byte buffer and are flushed `FLUSH_AFTER_S` after the
    first one (or when the buffer fills): one write call per batch instead of one per
    request. Other log lines keep their order: the text layer flushes the buffer too.
    Falls back to the logger when its handler is not a plain stream.
    """

    FLUSH_AFTER_S = 0.02

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger("gateway.access")
        self.enabled = self._logger.isEnabledFor(logging.INFO)
        streams = [h for h in self._logger.handlers if type(h) is logging.StreamHandler]
        stream = streams[0].stream if len(self._logger.handlers) == 1 and streams else None
        self._buffer: BinaryIO | None = getattr(stream, "buffer", None)
        self._stream: TextIO | None = stream
        self._flush_due = False

    def write(self, fields: dict[str, object]) -> None:
        if not self.enabled:
            return
        if self._stream is None:
            self._logger.info("access", extra={"fields": fields})
            return
        line = {"ts": round(time.time(), 3), "level": "info", "logger": self._logger.name}
        line.update(fields)
        if self._buffer is None:
            self._stream.write(jsonutil.dumps(line).decode() + "\n")
            self._stream.flush()
            return
        self._buffer.write(jsonutil.dumps(line) + b"\n")
        if not self._flush_due:
            self._flush_due = True
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_AFTER_S, self.flush)
            except RuntimeError:  # no event loop (a test, a shutdown): flush now
                self.flush()

    def flush(self) -> None:
        self._flush_due = False
        if self._buffer is not None:
            try:
                self._buffer.flush()
            except (OSError, ValueError):  # a closed or broken stream loses the lines
                pass


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(buffered_stderr())
    handler.setFormatter(JSONFormatter())
    for name in ("gateway", "gateway.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def buffered_stderr() -> TextIO:
    """stderr over a byte buffer that the access log batches into.

    Python's own `sys.stderr.buffer` is the unbuffered file itself when stderr is not a
    terminal, which made every access line a write call of its own. The text layer
    writes through to the buffer and the handler flushes after each record, so other
    log lines still go out at once, and in order after the access lines before them.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by something without a file
        return sys.stderr
    raw = io.FileIO(fd, "wb", closefd=False)
    buffer = io.BufferedWriter(raw, buffer_size=_STDERR_BUFFER_BYTES)
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="backslashreplace", write_through=True)


def now_ms() -> float:
    return time.time() * 1000
