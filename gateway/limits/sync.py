"""The background halves of limits: pending writes, and deployment use shared across replicas.

`PendingWrites` takes settlements and releases off the response path. A background
task writes them in batches (one pipeline per batch); while Redis is down they wait,
bounded, and are retried: safe because every write is idempotent per request id.
Requests that reserved nothing (keys without limits: most traffic) are not written
one by one: `bill` adds each to its key's tally per day, and each tally
goes out as one settlement (with its own id) in the next batch. One script call and
one short-lived settle marker in Redis per tally instead of per request; a Redis
script call and its marker per request were a tenth of a cache-missing request's
CPU and, at 5,000 requests/s, 1.5 million marker keys held in Redis. The memory
store takes tallies the same way (applied before its counters are read), and every
other write at once.

`DeploymentQuotas` answers the planner's "how much rpm/tpm is left on this
deployment?" from process memory only. Every `interval_s` it sends this replica's
use since the last sync to Redis in one script call and gets back the totals of
every replica. Headroom = limit - (shared total + local use since the sync). Across
replicas the view lags by at most one interval, so a deployment may take a few
requests past its quota; the provider's own 429 then moves them on (fallback). While
Redis is down, each replica counts its own use only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.keys import Caller
from gateway.limits.scripts import RedisLimitStore
from gateway.limits.store import (
    LimitStore,
    Settlement,
    Write,
    budget_period,
    new_admission,
    usage_day,
)
from gateway.redis import WRITE_LINGER_S, RedisUnavailableError
from gateway.telemetry import Metrics

log = logging.getLogger("gateway")

_BATCH = 64
_RETRY_S = 0.5


@dataclass(slots=True)
class _Tally:
    """Requests of one key and day that reserved nothing, not written yet."""

    caller: Caller
    period: tuple[str, int]  # the budget period their cost is spent in
    tokens: int = 0
    cost_usd: float = 0.0

    def settlement(self) -> Settlement:
        admission = new_admission(self.caller, 0, 0.0, self.period)
        return Settlement(admission, False, self.tokens, self.cost_usd)


class PendingWrites:
    def __init__(self, store: LimitStore, max_pending: int, metrics: Metrics) -> None:
        self._store = store
        self._max_pending = max_pending
        self._metrics = metrics
        self._queue: deque[Write] = deque()
        self._tallies: dict[tuple[str, str], _Tally] = {}  # (key id, day)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropping = False

    def start(self) -> None:
        # The memory store applies other writes at once, but takes tallies from it too.
        self._task = asyncio.create_task(self._run(), name="limit-writes")

    async def submit(self, write: Write) -> None:
        if not self._store.shared:
            await self._store.apply([write])  # in memory: nothing to wait for
            return
        self.enqueue(write)

    def bill(self, caller: Caller, tokens: int, cost_usd: float) -> None:
        """One request that reserved nothing, into its tally (written in the background).
        A tally per day: a day's (or month's) budget period never gets another's cost."""
        day = usage_day()
        tally = self._tallies.get((caller.key_id, day))
        if tally is None:
            tally = _Tally(caller, budget_period(caller.budget_period))
            self._tallies[caller.key_id, day] = tally
        tally.tokens += tokens
        tally.cost_usd += cost_usd
        self._wake.set()

    async def apply_tallies(self) -> None:
        """A memory store's tallies applied now, before its counters are read (a shared
        store's go out with the next batch, as they would anyway)."""
        if not self._store.shared:
            await self._store.apply(self._settle_tallies())

    def _settle_tallies(self) -> list[Settlement]:
        tallies, self._tallies = self._tallies, {}
        return [tally.settlement() for tally in tallies.values()]

    def enqueue(self, write: Write) -> None:
        """Queue for the background writer (shared stores); never waits."""
        self._push(write)
        self._wake.set()

    def _push(self, write: Write) -> None:
        if len(self._queue) >= self._max_pending:
            self._queue.popleft()
            self._metrics.limit_writes_dropped.inc()
            if not self._dropping:
                self._dropping = True
                log.warning("limit writes: %d pending, dropping the oldest", self._max_pending)
        self._queue.append(write)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._queue) < _BATCH:
                await asyncio.sleep(WRITE_LINGER_S)  # let a batch gather: fewer round trips
            self._wake.clear()
            for settlement in self._settle_tallies():
                self._push(settlement)
            while self._queue:
                if not await self.flush_batch():
                    await asyncio.sleep(_RETRY_S)

    async def flush_batch(self) -> bool:
        batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
        try:
            await self._store.apply(batch)
        except RedisUnavailableError:
            self._queue.extendleft(reversed(batch))  # already logged and counted
            return False
        self._dropping = False
        return True

    async def aclose(self, deadline_s: float = 2.0) -> None:
        """Stop, writing what is left for at most `deadline_s` (shutdown must not hang)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for settlement in self._settle_tallies():
            self._push(settlement)
        end = time.monotonic() + deadline_s
        while self._queue and time.monotonic() < end:
            if not await self.flush_batch():
                break
        if self._queue:
            log.warning("limit writes: %d not written at shutdown", len(self._queue))


class _LocalWindow:
    """This process's use of one deployment over the window (oldest first)."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int, int]] = deque()
        self.requests = 0
        self.tokens = 0

    def add(self, now: float, requests: int, tokens: int) -> None:
        self.entries.append((now, requests, tokens))
        self.requests += requests
        self.tokens += tokens

    def prune(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            _, requests, tokens = self.entries.popleft()
            self.requests -= requests
            self.tokens -= tokens


class DeploymentQuotas:
    def __init__(
        self,
        quotas: Mapping[str, tuple[int | None, int | None]],
        window_s: float,
        store: RedisLimitStore | None,
        interval_s: float,
    ) -> None:
        self._quotas = dict(quotas)  # deployment -> (rpm, tpm): only those with a quota
        self._window_s = window_s
        self._store = store
        self._interval_s = interval_s
        self._local = {d: _LocalWindow() for d in self._quotas}
        self._pending = {d: [0, 0] for d in self._quotas}
        self._shared: dict[str, tuple[int, int]] = {}
        self._sending: dict[str, tuple[int, int]] = {}
        self._shared_until = 0.0  # the shared totals are trusted until then
        self._task: asyncio.Task[None] | None = None

    def headroom(self, deployment_id: str) -> tuple[int | None, int | None]:
        quota = self._quotas.get(deployment_id)
        if quota is None:
            return None, None
        requests, tokens = self._use(deployment_id)
        rpm, tpm = quota
        return (
            None if rpm is None else max(0, rpm - requests),
            None if tpm is None else max(0, tpm - tokens),
        )

    def _use(self, deployment_id: str) -> tuple[int, int]:
        now = time.monotonic()
        local = self._local[deployment_id]
        local.prune(now - self._window_s)
        if now < self._shared_until and deployment_id in self._shared:
            shared, pending = self._shared[deployment_id], self._pending[deployment_id]
            sending = self._sending.get(deployment_id, (0, 0))
            return (
                shared[0] + sending[0] + pending[0],
                shared[1] + sending[1] + pending[1],
            )
        return local.requests, local.tokens

    def used(self, deployment_id: str, requests: int, tokens: int) -> None:
        local = self._local.get(deployment_id)
        if local is None:
            return
        now = time.monotonic()
        local.prune(now - self._window_s)
        local.add(now, requests, tokens)
        pending = self._pending[deployment_id]
        pending[0] += requests
        pending[1] += tokens

    def start(self) -> None:
        if self._store is not None and self._quotas:
            self._task = asyncio.create_task(self._run(), name="deployment-quotas")

    async def _run(self) -> None:
        while True:
            await self.sync_once()
            await asyncio.sleep(self._interval_s)

    async def sync_once(self) -> None:
        assert self._store is not None
        # Use sent but not yet in the totals still counts (`_sending`) until they arrive.
        self._sending = {d: (p[0], p[1]) for d, p in self._pending.items()}
        for pending in self._pending.values():
            pending[0] = pending[1] = 0
        try:
            totals = await self._store.sync_deployments(self._sending)
        except RedisUnavailableError:
            self._shared_until = 0.0  # local counts only until Redis answers again
            return
        finally:
            self._sending = {}
        self._shared = totals
        # A stalled sync task must not pin old totals forever; an outage resets this at once.
        self._shared_until = time.monotonic() + max(1.0, 5 * self._interval_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
