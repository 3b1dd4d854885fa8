"""Prometheus metrics (and their pending batches), runtime metrics, logs, memory trimming.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.telemetry.logs import AccessLog, configure_logging
from gateway.telemetry.memory_trim import build_trimmer
from gateway.telemetry.metrics import Metrics, render_multiprocess
from gateway.telemetry.runtime import register_runtime_metrics

__all__ = [
    "AccessLog",
    "Metrics",
    "build_trimmer",
    "configure_logging",
    "register_runtime_metrics",
    "render_multiprocess",
]
