"""Per-key budget gauges: each key's budget and what it spent in the current period.

Computed from memory when metrics are flushed (before each scrape this process serves,
and once a second), never per request: the live keys come from the key store's mirror,
the spend from the ledger's copy in memory (`gateway.records.LedgerSpend`, refreshed
every 2 s). The ledger is the system of record, shared by every worker and replica, so
every process reports the same number; it trails the requests by the records writer's
flush interval plus that refresh (about 3 s). Without request records
(`database.records: false`) nothing writes the ledger: only the budgets are exported.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.keys import KeyStore
from gateway.limits.store import budget_period
from gateway.telemetry import Metrics


class BudgetMetrics:
    def __init__(
        self,
        keys: KeyStore,
        metrics: Metrics,
        spent: Callable[[str, str], float] | None,
    ) -> None:
        """`spent`: (key id, budget period id) -> USD, from memory; None: not known."""
        self._keys = keys
        self._metrics = metrics
        self._spent = spent

    def refresh(self) -> None:
        spent = self._spent
        budgets = []
        for caller in self._keys.callers():
            if caller.budget_usd is None:
                continue
            period, _ = budget_period(caller.budget_period)
            used = spent(caller.key_id, period) if spent is not None else None
            team = caller.team or "none"
            budgets.append((caller.name, team, caller.budget_period, caller.budget_usd, used))
        self._metrics.set_key_budgets(budgets)


def export_budgets(
    keys: KeyStore, metrics: Metrics, spent: Callable[[str, str], float] | None
) -> BudgetMetrics:
    """The gauges, refreshed at every metrics flush from now on."""
    budgets = BudgetMetrics(keys, metrics, spent)
    metrics.add_refresher(budgets.refresh)
    return budgets
