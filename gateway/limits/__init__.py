"""Rate limits, budgets and concurrency: admission, settlement, the stores and scripts
behind them, the usage report.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.limits.admission import Answer, Limits, Reservation, build_limits, has_limits
from gateway.limits.budget_metrics import export_budgets
from gateway.limits.usage_report import (
    ReportRangeError,
    report_days,
    run_usage,
    summarize,
    usage_rows,
)

__all__ = [
    "Answer",
    "Limits",
    "Reservation",
    "ReportRangeError",
    "build_limits",
    "export_budgets",
    "has_limits",
    "report_days",
    "run_usage",
    "summarize",
    "usage_rows",
]
