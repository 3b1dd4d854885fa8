"""What the limit stores agree on, and the in-memory store used when no Redis is configured.

A store decides admissions and applies settlements and releases. `RedisLimitStore`
(gateway.limits.scripts) does it in Lua, shared by every worker and replica;
`MemoryLimitStore` below follows the same rules in one process, so a gateway
without Redis still enforces limits (per process: with several workers, each one
counts alone). The rules, for one admission:

1. budget: refused (`budget`) when spent + reserved >= budget, or when adding the
   estimated cost would pass it; checked first, so an exhausted key never gets a
   retryable 429;
2. rpm: a sliding log of admitted requests over `window_s`; full -> `rpm`, with the
   wait until the oldest entry leaves the window;
3. tpm: a sliding log of token reservations; refused (`tpm`) when the window is
   not empty and the estimate would pass the limit, with the wait until enough
   tokens leave;
4. all checks passed -> reserve everything at once: the rpm entry, the token
   estimate, the cost estimate. The reservation is also the settle marker.

Settle replaces the estimates with the real numbers exactly once per request id
(a retried write after a timeout finds no reservation and does nothing); release
gives everything back. A settlement with no reservation (a key without limits, which
reserves nothing, or an admission made while the store was down) bills as it comes:
only the shared store retries writes, and there a short-lived marker per request id
(`gateway.limits.scripts`) keeps a retry from billing twice; here nothing is retried,
so nothing is kept per request. A reservation whose request never settles (a crashed
replica) stops holding budget after `reservation_ttl_s`; a late settle still bills.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from gateway.ids import new_id
from gateway.keys import Caller

# Float sums of prices: a request that exactly fits the budget must fit.
BUDGET_EPSILON_USD = 1e-9
_LOST_KEEP_S = 86_400.0  # how long a late settle of a given-up reservation still bills


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field by a call
class Admission:
    """One request's claim on its key's limits. Built by `gateway.limits.admission`."""

    request_id: str  # made by the gateway, unique: never the client's x-request-id
    key_id: str
    key_name: str
    team: str | None
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    period: str  # budget period id: d2025-01-31 | m2025-01 | total
    period_ttl_s: int  # 0 = keep (period "total")
    tokens: int
    cost_usd: float
    # What the ledger (SQL) says the key spent in this period: the stores start a budget
    # counter they have not seen before from it (see `gateway.records.LedgerSpend`).
    floor_usd: float = 0.0


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field by a call
class Decision:
    reason: str | None  # None = admitted; rpm | tpm | budget
    retry_after_s: float = 0.0
    # Admitted: what is left of the key's rpm and tpm limits (None: no such limit), for
    # the x-ratelimit-* headers of the answer.
    requests: Headroom | None = None
    tokens: Headroom | None = None
    budget_used_usd: float | None = None  # refused for its budget: spent plus reserved


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field by a call
class Headroom:
    left: int
    reset_s: float  # until the oldest counted entry leaves the window


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field by a call
class Settlement:
    admission: Admission
    reserved: bool  # False: nothing reserved (no limits, or admitted during an outage)
    tokens: int  # input and output
    cost_usd: float


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field by a call
class Release:
    admission: Admission


Write = Settlement | Release


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    key_id: str
    key: str
    team: str | None
    route: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class LimitStore(Protocol):
    """Redis-backed stores raise `RedisUnavailableError`; the memory store never fails."""

    shared: bool  # True when every replica sees the same counters

    async def admit(self, admission: Admission) -> Decision: ...

    async def apply(self, writes: Sequence[Write]) -> None: ...

    async def spend(self, key_id: str, period: str) -> tuple[float, float]: ...


def new_admission(
    caller: Caller,
    tokens: int,
    cost_usd: float,
    period: tuple[str, int] | None = None,
    floor: Callable[[str, str], float] | None = None,
) -> Admission:
    """`period`: (id, ttl) of the budget period billed; None = the current one."""
    period_id, period_ttl_s = period or budget_period(caller.budget_period)
    return Admission(
        request_id=new_id(),
        key_id=caller.key_id,
        key_name=caller.name,
        team=caller.team,
        rpm=caller.rpm,
        tpm=caller.tpm,
        budget_usd=caller.budget_usd,
        period=period_id,
        period_ttl_s=period_ttl_s,
        tokens=max(0, tokens),
        cost_usd=max(0.0, cost_usd),
        floor_usd=floor(caller.key_id, period_id) if floor and caller.budget_usd else 0.0,
    )


def budget_period(period: str, now: datetime | None = None) -> tuple[str, int]:
    """(period id, seconds to keep its counters); periods are UTC calendar days and months."""
    day, month = _calendar(now)
    if period == "day":
        return f"d{day}", 2 * 86_400
    if period == "month":
        return f"m{month}", 62 * 86_400
    return "total", 0


def usage_day(now: datetime | None = None) -> str:
    return _calendar(now)[0]


def _calendar(now: datetime | None) -> tuple[str, str]:
    """("YYYY-MM-DD", "YYYY-MM") in UTC; formatted once per day, not once per request."""
    if now is not None:
        return f"{now:%Y-%m-%d}", f"{now:%Y-%m}"
    return _day_strings(int(time.time() // 86_400))  # a UTC day is 86,400 Unix seconds


@functools.lru_cache(maxsize=2)
def _day_strings(day_index: int) -> tuple[str, str]:
    return _calendar(datetime.fromtimestamp(day_index * 86_400, UTC))


@dataclass(slots=True)
class _Budget:
    seeded: bool = False
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    reservations: dict[str, tuple[float, float]] = field(default_factory=dict)  # rid -> (t, usd)
    lost: dict[str, float] = field(default_factory=dict)  # rid -> t


class MemoryLimitStore:
    """The rules above for one process (dicts keep insertion order = time order)."""

    shared = False

    def __init__(
        self,
        window_s: float,
        reservation_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._reservation_ttl_s = reservation_ttl_s
        self._clock = clock
        self._requests: dict[str, dict[str, float]] = {}  # key -> rid -> t
        self._tokens: dict[str, dict[str, tuple[float, int]]] = {}  # key -> rid -> (t, tokens)
        # defaultdicts, not setdefault(key, _Budget()): that builds (and throws away) a
        # new object on every call, every request.
        self._budgets: defaultdict[tuple[str, str], _Budget] = defaultdict(_Budget)

    async def admit(self, a: Admission) -> Decision:
        now = self._clock()
        budget = self._budget(a, now)
        if a.budget_usd is not None and not budget.seeded:
            budget.seeded = True
            budget.spent_usd += a.floor_usd
        if a.budget_usd is not None:
            used = budget.spent_usd + budget.reserved_usd
            if used >= a.budget_usd or used + a.cost_usd > a.budget_usd + BUDGET_EPSILON_USD:
                return Decision("budget", budget_used_usd=used)
        requests = self._expire_requests(a.key_id, now)
        if a.rpm is not None and len(requests) >= a.rpm:
            oldest = next(iter(requests.values()))
            return Decision("rpm", oldest + self._window_s - now)
        tokens = self._expire_tokens(a.key_id, now)
        wait_s = self._tokens_wait_s(tokens, a, now)
        if wait_s is not None:
            return Decision("tpm", wait_s)
        if a.rpm is not None:
            requests[a.request_id] = now
        if a.tpm is not None:
            tokens[a.request_id] = (now, a.tokens)
        held_usd = a.cost_usd if a.budget_usd is not None else 0.0
        budget.reservations[a.request_id] = (now, held_usd)
        budget.reserved_usd += held_usd
        return Decision(
            None, 0.0, self._requests_left(a, requests, now), self._tokens_left(a, tokens, now)
        )

    def _requests_left(
        self, a: Admission, requests: dict[str, float], now: float
    ) -> Headroom | None:
        if a.rpm is None:
            return None
        oldest = next(iter(requests.values()))
        return Headroom(a.rpm - len(requests), max(0.0, oldest + self._window_s - now))

    def _tokens_left(
        self, a: Admission, tokens: dict[str, tuple[float, int]], now: float
    ) -> Headroom | None:
        if a.tpm is None:
            return None
        used = sum(n for _, n in tokens.values())
        oldest = min(t for t, _ in tokens.values())
        return Headroom(max(0, a.tpm - used), max(0.0, oldest + self._window_s - now))

    def _budget(self, a: Admission, now: float) -> _Budget:
        budget = self._budgets[a.key_id, a.period]
        cutoff = now - self._reservation_ttl_s
        for rid, (t, usd) in list(budget.reservations.items()):
            if t > cutoff:
                break
            del budget.reservations[rid]
            budget.reserved_usd -= usd
            budget.lost[rid] = now
        for rid, t in list(budget.lost.items()):
            if t > now - _LOST_KEEP_S:
                break
            del budget.lost[rid]
        return budget

    def _expire_requests(self, key_id: str, now: float) -> dict[str, float]:
        requests = self._requests.setdefault(key_id, {})
        while requests:
            rid, t = next(iter(requests.items()))
            if t > now - self._window_s:
                break
            del requests[rid]
        return requests

    def _expire_tokens(self, key_id: str, now: float) -> dict[str, tuple[float, int]]:
        tokens = self._tokens.setdefault(key_id, {})
        while tokens:
            rid, (t, _) = next(iter(tokens.items()))
            if t > now - self._window_s:
                break
            del tokens[rid]
        return tokens

    def _tokens_wait_s(
        self, tokens: Mapping[str, tuple[float, int]], a: Admission, now: float
    ) -> float | None:
        if a.tpm is None:
            return None
        used = sum(n for _, n in tokens.values())
        if used == 0 or used + a.tokens <= a.tpm:
            return None
        need, wait_s = used + a.tokens - a.tpm, 0.0
        for t, n in tokens.values():
            need -= n
            wait_s = t + self._window_s - now
            if need <= 0:
                break
        return wait_s

    async def apply(self, writes: Sequence[Write]) -> None:
        for write in writes:
            if isinstance(write, Settlement):
                self._settle(write)
            else:
                self._release(write.admission)

    def _settle(self, s: Settlement) -> None:
        a = s.admission
        budget = self._budgets[a.key_id, a.period]
        held = budget.reservations.pop(a.request_id, None)
        if held is not None:
            budget.reserved_usd -= held[1]
        elif budget.lost.pop(a.request_id, None) is None and s.reserved:
            return  # settled already: a retried write
        budget.spent_usd += s.cost_usd
        tokens = self._tokens.get(a.key_id, {})
        if a.request_id in tokens:
            tokens[a.request_id] = (tokens[a.request_id][0], s.tokens)

    def _release(self, a: Admission) -> None:
        budget = self._budgets[a.key_id, a.period]
        held = budget.reservations.pop(a.request_id, None)
        if held is None:
            budget.lost.pop(a.request_id, None)
            return
        budget.reserved_usd -= held[1]
        self._requests.get(a.key_id, {}).pop(a.request_id, None)
        self._tokens.get(a.key_id, {}).pop(a.request_id, None)

    async def spend(self, key_id: str, period: str) -> tuple[float, float]:
        budget = self._budgets.get((key_id, period), _Budget())
        return budget.spent_usd, budget.reserved_usd
