"""Rate limits and budgets per gateway key, and per-deployment quotas (rules 7 and 8).

The pipeline calls these hooks:

- `ask`, then `conclude`, before any upstream call: one store call (a Lua script with
  Redis) checks the key's budget, rpm and tpm and reserves the estimates together,
  then the reservation is taken or the refusal raised (keys with none of the three
  are not admitted at all, `has_limits`: nothing to check or reserve):
  budget -> 429 insufficient_quota (x-should-retry: false), rpm/tpm -> 429
  rate_limit_exceeded with retry-after. Apart, so that the question can go to Redis
  with the cache read and the answer be acted on once the read is known (`withdraw`
  gives back an answer not acted on: gateway.api.chat.AdmissionAhead);
- `settle` once the real usage and cost are on the context (streams included, and
  client disconnects): replaces the estimates with the real numbers, exactly once
  per request id, written in the background (a key without limits reserved nothing:
  its requests are billed in tallies, see gateway.limits.sync);
- `release` when the request failed: gives every reservation back;
- `deployment_headroom` when planning: local numbers, no Redis round trip;
- `deployment_used` after each successful upstream call.

`rpm` and `tpm`, of keys and of deployments, count over the sliding `limits.window_s`
(60 s by default). The estimate reserved at admission is the caller's: the prompt
estimate plus the expected output on the first planned deployment, and its cost.

Redis unavailable (`limits.on_redis_error`): keys with a budget are refused with a
503 limits_unavailable and a retry-after (budgets fail closed); other keys are
served unchecked (rate limits fail open), counted in gateway_limits_fail_open_total;
SharedRedis logs one warning per outage. Without Redis in the config, the same rules
run in process memory (`MemoryLimitStore`): exact for one process, per worker with
several.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config import Deployment, GatewayConfig
from gateway.context import RequestContext
from gateway.errors import (
    GatewayError,
    LimitsUnavailableError,
    QuotaExceededError,
    RateLimitedError,
)
from gateway.keys import Caller
from gateway.limits.scripts import RedisLimitStore
from gateway.limits.store import (
    Admission,
    Decision,
    Headroom,
    LimitStore,
    MemoryLimitStore,
    Release,
    Settlement,
    budget_period,
    new_admission,
)
from gateway.limits.sync import DeploymentQuotas, PendingWrites
from gateway.redis import RedisUnavailableError, SharedRedis
from gateway.telemetry import Metrics

_MIN_RESERVATION_TTL_S = 120.0


class Reservation:
    """What `Limits.conclude` returns: the request holds it and hands it to `settle` or
    `release`, which take it once (a release after the settle gives nothing back). Never
    settled (a crash), its store entries expire on their own."""

    __slots__ = ("admission", "reserved", "requests", "tokens", "_taken")

    def __init__(
        self,
        admission: Admission,
        reserved: bool,
        requests: Headroom | None = None,
        tokens: Headroom | None = None,
    ) -> None:
        self.admission = admission
        self.reserved = reserved  # False: admitted while the store was unreachable
        self.requests = requests  # what is left of the key's rpm (None: unknown, or none)
        self.tokens = tokens  # ... and of its tpm
        self._taken = False

    def take(self) -> Reservation | None:
        """This reservation the first time; None after."""
        if self._taken:
            return None
        self._taken = True
        return self


@dataclass(frozen=True, slots=True)
class Answer:
    """What the store said to one admission (`Limits.ask`), not acted on yet."""

    admission: Admission
    decision: Decision | None  # None: the store was unreachable

    @property
    def admitted(self) -> bool:
        return self.decision is not None and self.decision.reason is None


class Limits:
    def __init__(
        self,
        config: GatewayConfig,
        store: LimitStore,
        quotas: DeploymentQuotas,
        metrics: Metrics,
        floor: Callable[[str, str], float] | None = None,
    ) -> None:
        self._rules = config.limits.on_redis_error
        self._floor = floor  # the ledger's spend per (key id, period): a new counter's start
        self.store = store
        self._writes = PendingWrites(store, config.limits.pending_writes_max, metrics)
        self._quotas = quotas
        self._metrics = metrics

    def start(self) -> None:
        self._writes.start()
        self._quotas.start()

    async def aclose(self) -> None:
        await self._quotas.aclose()
        await self._writes.aclose()

    async def ask(self, caller: Caller, estimated_tokens: int, estimated_cost_usd: float) -> Answer:
        """The store's answer to the caller's admission, not acted on yet: `conclude`
        turns it into a reservation or the refusal, `withdraw` gives back what it
        reserved when the request is served without it. For a caller with limits
        (`has_limits`); callers skip it for one without: nothing to check or reserve,
        and its settle (with no reservation) bills it in a tally."""
        admission = new_admission(caller, estimated_tokens, estimated_cost_usd, floor=self._floor)
        try:
            return Answer(admission, await self.store.admit(admission))
        except RedisUnavailableError:
            return Answer(admission, None)
        except asyncio.CancelledError:
            if self.store.shared:  # the script may have run: give its reservation back
                self._writes.enqueue(Release(admission))
            raise

    async def conclude(self, caller: Caller, answer: Answer, hit: bool = False) -> Reservation:
        """The reservation an answer made, or its refusal raised (and counted). `hit`: the
        request is a cache hit, settled at zero: what is left of the key's tpm does not
        count its estimate."""
        decision = answer.decision
        if decision is None:
            await self._admit_unchecked(caller, answer.admission)
            return Reservation(answer.admission, reserved=False)
        if decision.reason is not None:
            self._metrics.record_rejection(decision.reason, caller.name, caller.team or "none")
            raise refusal(caller, decision, answer.admission.cost_usd)
        tokens = decision.tokens
        if hit and tokens is not None and caller.tpm is not None:
            left = min(caller.tpm, tokens.left + answer.admission.tokens)
            tokens = Headroom(left, tokens.reset_s)
        return Reservation(answer.admission, True, decision.requests, tokens)

    def withdraw(self, answer: Answer) -> None:
        """An answer not acted on: what it reserved, or may have (the store did not
        answer), is given back in the background. A refusal reserved nothing."""
        if answer.decision is None or answer.decision.reason is None:
            self._writes.enqueue(Release(answer.admission))

    async def _admit_unchecked(self, caller: Caller, admission: Admission) -> None:
        """The store is unreachable: refuse or serve, per `limits.on_redis_error`."""
        what = None
        if caller.budget_usd is not None and self._rules.budgets == "closed":
            what = "budget"
        elif (caller.rpm or caller.tpm) and self._rules.rate_limits == "closed":
            what = "rate limits"
        if what is None:
            self._metrics.limits_fail_open.inc()
            return
        self._metrics.record_rejection("limits_unavailable", caller.name, caller.team or "none")
        # The admission may have been applied before the timeout: undo it when Redis is back.
        await self._writes.submit(Release(admission))
        raise LimitsUnavailableError(
            f"The gateway cannot check this key's {what} right now; try again shortly.",
            retry_after_s=self._rules.retry_after_s,
        )

    async def settle(
        self, ctx: RequestContext, caller: Caller, reservation: Reservation | None
    ) -> None:
        """Bills the request's usage and cost (on `ctx`) against what it reserved."""
        held = reservation.take() if reservation is not None else None
        usage = ctx.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        if ctx.deployment_id is not None:
            self._quotas.used(ctx.deployment_id, 0, input_tokens + output_tokens)
        tokens, cost_usd = input_tokens + output_tokens, ctx.cost_usd or 0.0
        if held is None:  # nothing reserved, nothing in the store: billed in its key's tally
            self._writes.bill(caller, tokens, cost_usd)
            return
        await self._writes.submit(Settlement(held.admission, held.reserved, tokens, cost_usd))

    async def release(self, reservation: Reservation | None) -> None:
        """The request ends without usage to bill: its reservation is given back."""
        held = reservation.take() if reservation is not None else None
        if held is not None:
            await self._writes.submit(Release(held.admission))

    def deployment_headroom(self, deployment_id: str) -> tuple[int | None, int | None]:
        """(remaining rpm, remaining tpm) for routing; None = no limit set."""
        return self._quotas.headroom(deployment_id)

    def deployment_used(self, deployment_id: str, tokens: int) -> None:
        self._quotas.used(deployment_id, 1, tokens)

    async def spend(self, key_id: str, period_kind: str) -> tuple[str, float, float]:
        """(period id, spent USD, reserved USD) of a key's current budget period."""
        period, _ = budget_period(period_kind)
        await self._writes.apply_tallies()
        spent, reserved = await self.store.spend(key_id, period)
        return period, spent, reserved


def has_limits(caller: Caller) -> bool:
    return caller.rpm is not None or caller.tpm is not None or caller.budget_usd is not None


def refusal(caller: Caller, decision: Decision, estimated_usd: float = 0.0) -> GatewayError:
    if decision.reason == "budget":
        return budget_refusal(caller, decision.budget_used_usd, estimated_usd)
    limit = caller.rpm if decision.reason == "rpm" else caller.tpm
    unit = "requests" if decision.reason == "rpm" else "tokens"
    return RateLimitedError(
        f"Rate limit of key '{caller.name}' reached ({limit} {unit} per window); "
        f"retry in {decision.retry_after_s:.1f}s.",
        retry_after_s=decision.retry_after_s,
    )


def budget_refusal(caller: Caller, used_usd: float | None, estimated_usd: float) -> GatewayError:
    """Says whether the budget is spent, or what is left against what this request was
    estimated at (and how to ask for less)."""
    budget = caller.budget_usd or 0.0
    what = f"The budget of key '{caller.name}' ({budget:g} USD per {caller.budget_period})"
    if used_usd is None or used_usd >= budget:
        spent = f": {used_usd:.4f} USD spent or reserved" if used_usd is not None else ""
        return QuotaExceededError(f"{what} is used up{spent}.")
    return QuotaExceededError(
        f"{what} has {budget - used_usd:.4f} USD left, and this request is estimated at up "
        f"to {estimated_usd:.4f} USD. Lower max_tokens to lower the estimate, or retry when "
        "requests in flight have settled."
    )


def reservation_ttl_s(config: GatewayConfig) -> float:
    """How long a reservation may wait for its settle before it stops holding budget."""
    return max(_MIN_RESERVATION_TTL_S, 2 * config.server.request_timeout_s)


def build_limits(
    config: GatewayConfig,
    redis: SharedRedis | None,
    metrics: Metrics,
    deployments: Mapping[str, Deployment],
    floor: Callable[[str, str], float] | None = None,
) -> Limits:
    window_s = config.limits.window_s
    redis_store = None
    store: LimitStore
    if redis is not None:
        redis_store = RedisLimitStore(redis, window_s, reservation_ttl_s(config))
        store = redis_store
    else:
        store = MemoryLimitStore(window_s, reservation_ttl_s(config))
    quotas = DeploymentQuotas(
        {d.id: (d.rpm, d.tpm) for d in deployments.values() if d.has_quota},
        window_s,
        redis_store,
        config.limits.deployment_sync_interval_s,
    )
    return Limits(config, store, quotas, metrics, floor)
