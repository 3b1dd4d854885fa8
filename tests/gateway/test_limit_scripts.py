"""The limit rules, run against a real redis-server (Lua) and the in-memory store alike:
both must decide every case the same way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import RedisConfig
from gateway.keys.store import Caller
from gateway.limits.scripts import RedisLimitStore
from gateway.limits.store import (
    Admission,
    LimitStore,
    MemoryLimitStore,
    Release,
    Settlement,
    budget_period,
)
from gateway.limits.sync import DeploymentQuotas, PendingWrites
from gateway.redis.client import shared_redis
from gateway.telemetry.metrics import Metrics
from tests.gatewayproc import RedisServer
from tests.redis_cluster import RedisClusterDeployment

Scenario = Callable[[LimitStore], Awaitable[None]]


@asynccontextmanager
async def redis_store(
    url: str, window_s: float, reservation_ttl_s: float, mode: str = "standalone"
) -> AsyncIterator[RedisLimitStore]:
    config = RedisConfig(mode=mode, url=url, operation_deadline_s=1.0)  # type: ignore[arg-type]
    redis = shared_redis(config, Metrics(CollectorRegistry()))
    try:
        yield RedisLimitStore(redis, window_s, reservation_ttl_s)
    finally:
        await redis.aclose()


@dataclass(frozen=True)
class Backend:
    url: str
    mode: str  # redis.mode: standalone | cluster


@pytest.fixture(params=["standalone", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """One Redis, or a Redis Cluster, for the tests of what only a shared store does."""
    if request.param == "cluster":
        cluster: RedisClusterDeployment = request.getfixturevalue("redis_cluster")
        return Backend(cluster.url, "cluster")
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend(server.url, "standalone")


@pytest.fixture(params=["redis", "cluster", "memory"])
def run(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Run a scenario on one store kind: `run(scenario, window_s=..., reservation_ttl_s=...)`:
    one Redis, a Redis Cluster (every script's keys in one slot, or it answers CROSSSLOT),
    or the in-memory store."""

    def runner(scenario: Scenario, window_s: float = 30.0, reservation_ttl_s: float = 60.0) -> None:
        async def main() -> None:
            if request.param == "memory":
                await scenario(MemoryLimitStore(window_s, reservation_ttl_s))
                return
            if request.param == "cluster":
                cluster: RedisClusterDeployment = request.getfixturevalue("redis_cluster")
                url, mode = cluster.url, "cluster"
            else:
                url, mode = request.getfixturevalue("redis_server").url, "standalone"
            async with redis_store(url, window_s, reservation_ttl_s, mode) as store:
                await scenario(store)

        asyncio.run(main())

    return runner


def admission(**overrides: Any) -> Admission:
    period, ttl_s = budget_period(overrides.pop("budget_period", "month"))
    base = Admission(
        request_id=uuid.uuid4().hex,
        key_id=overrides.pop("key_id", "k-" + uuid.uuid4().hex[:10]),  # fresh key per test
        key_name="team-a-service",
        team="team-a",
        rpm=None,
        tpm=None,
        budget_usd=None,
        period=period,
        period_ttl_s=ttl_s,
        tokens=10,
        cost_usd=0.0,
    )
    return replace(base, **overrides)


def another(a: Admission, **overrides: Any) -> Admission:
    """The next request of the same key."""
    return replace(a, request_id=uuid.uuid4().hex, **overrides)


def settlement(a: Admission, cost_usd: float, tokens: int = 10, **overrides: Any) -> Settlement:
    fields: dict[str, Any] = {
        "admission": a,
        "reserved": True,
        "tokens": tokens,
        "cost_usd": cost_usd,
    }
    return Settlement(**{**fields, **overrides})


async def admit_all(store: LimitStore, admissions: list[Admission]) -> list[str | None]:
    return [(await store.admit(a)).reason for a in admissions]


def test_rpm_admits_exactly_the_limit_then_says_when(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=3)
        reasons = await admit_all(store, [first] + [another(first) for _ in range(3)])
        assert reasons == [None, None, None, "rpm"]
        refused = await store.admit(another(first))
        assert 25 < refused.retry_after_s <= 30  # the oldest entry leaves a 30 s window

    run(scenario)


def test_each_admission_says_what_is_left_of_both_limits(run: Callable[..., None]) -> None:
    """The x-ratelimit-* headers' numbers: what is left after this admission, and when
    the window's oldest entry leaves it (the script counts them without asking Redis
    again; the memory store must agree)."""

    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=5, tpm=100, tokens=10)
        seen = []
        for a in [first, another(first, tokens=20), another(first, tokens=30)]:
            d = await store.admit(a)
            assert d.reason is None and d.requests is not None and d.tokens is not None
            assert 25 < d.requests.reset_s <= 30 and 25 < d.tokens.reset_s <= 30
            seen.append((d.requests.left, d.tokens.left))
        assert seen == [(4, 90), (3, 70), (2, 40)]
        await store.apply([Release(first)])
        d = await store.admit(another(first, tokens=0))
        assert d.requests is not None and d.tokens is not None
        assert (d.requests.left, d.tokens.left) == (2, 50)

    run(scenario)


def test_concurrent_admissions_never_pass_the_limit(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=7)
        decisions = await asyncio.gather(*(store.admit(another(first)) for _ in range(40)))
        assert sum(d.reason is None for d in decisions) == 7

    run(scenario)


def test_window_slides(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=1)
        assert await admit_all(store, [first, another(first)]) == [None, "rpm"]
        await asyncio.sleep(0.35)
        assert (await store.admit(another(first))).reason is None

    run(scenario, window_s=0.3)


def test_release_gives_the_slot_back_once(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=2)
        second = another(first)
        assert await admit_all(store, [first, second]) == [None, None]
        await store.apply([Release(second), Release(second)])  # a retried release: no double
        assert await admit_all(store, [another(first), another(first)]) == [None, "rpm"]

    run(scenario)


def test_release_after_settle_changes_nothing(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=1)
        assert (await store.admit(first)).reason is None
        await store.apply([settlement(first, 0.0), Release(first)])
        assert (await store.admit(another(first))).reason == "rpm"

    run(scenario)


def test_tpm_reserves_the_estimate_and_settles_the_real_count(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(tpm=100, tokens=60)
        assert (await store.admit(first)).reason is None
        refused = await store.admit(another(first, tokens=50))
        assert refused.reason == "tpm" and refused.retry_after_s > 0
        await store.apply([settlement(first, 0.0, tokens=30)])  # used fewer than estimated
        assert (await store.admit(another(first, tokens=50))).reason is None
        assert (await store.admit(another(first, tokens=50))).reason == "tpm"

    run(scenario)


def test_requests_of_zero_tokens_leave_the_window_cleanly(run: Callable[..., None]) -> None:
    """A request that settled 0 tokens (cut before any usage) slides out of the window
    like any other. In Lua, minus zero is -0, which Redis' HINCRBY refuses as "not an
    integer": the script stopped there, left the entry in the window, and every later
    admission of the key failed the same way, a 500 each, for as long as the key had
    traffic (the window's keys expire only after a quiet window)."""

    async def scenario(store: LimitStore) -> None:
        first = admission(tpm=1000, tokens=0)
        assert (await store.admit(first)).reason is None
        await store.apply([settlement(first, 0.0, tokens=0)])
        for _ in range(4):  # traffic keeps the window's keys alive as `first` leaves it
            await asyncio.sleep(0.12)
            nxt = another(first, tokens=5)
            assert (await store.admit(nxt)).reason is None
            await store.apply([settlement(nxt, 0.0, tokens=0)])
        released = another(first, tokens=0)
        assert (await store.admit(released)).reason is None
        await store.apply([Release(released)])
        assert (await store.admit(another(first, tokens=1000))).reason is None

    run(scenario, window_s=0.2)


def test_an_oversized_request_passes_an_empty_window_only(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(tpm=100, tokens=500)
        assert (await store.admit(first)).reason is None
        assert (await store.admit(another(first, tokens=1))).reason == "tpm"

    run(scenario)


def test_budget_holds_estimates_and_bills_real_costs(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(budget_usd=3.0, cost_usd=1.0)
        others = [another(first) for _ in range(3)]
        assert await admit_all(store, [first, *others]) == [None, None, None, "budget"]
        await store.apply([settlement(first, 0.5), settlement(others[0], 0.5)])
        assert await store.spend(first.key_id, first.period) == (1.0, 1.0)
        assert await admit_all(store, [another(first), another(first)]) == [None, "budget"]

    run(scenario)


def test_concurrent_budget_admissions_fit_the_budget(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(budget_usd=1.0, cost_usd=0.1)
        decisions = await asyncio.gather(*(store.admit(another(first)) for _ in range(30)))
        assert sum(d.reason is None for d in decisions) == 10  # 10 x 0.1 fits exactly
        assert {d.reason for d in decisions} == {None, "budget"}

    run(scenario)


def test_exhausted_budget_wins_over_rate_limit(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(rpm=1, budget_usd=1.0, cost_usd=1.0)
        assert (await store.admit(first)).reason is None
        await store.apply([settlement(first, 1.0)])
        # Both limits are reached; the client must hear "budget" (not retryable), not "rpm".
        assert (await store.admit(another(first))).reason == "budget"

    run(scenario)


def test_settle_is_idempotent_per_request_id(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(budget_usd=10.0, cost_usd=1.0)
        assert (await store.admit(first)).reason is None
        once = settlement(first, 0.25, tokens=8)
        await store.apply([once])
        await store.apply([once, once])  # a write that timed out, then retried
        assert await store.spend(first.key_id, first.period) == (0.25, 0.0)

    run(scenario)


def test_a_late_applied_admission_settles_once_when_the_settle_repeats(
    backend: Backend,
) -> None:
    """The admission timed out (the request went on, fail open: its settle says not
    reserved) but Redis ran it later, so the settle finds it held. The settle's answer
    is lost and it is written again: the second run must not bill a second time.
    (Only the shared store has timeouts and retried writes.)"""

    async def main() -> None:
        async with redis_store(backend.url, 30.0, 60.0, backend.mode) as store:
            first = admission(budget_usd=10.0, cost_usd=1.0)
            assert (await store.admit(first)).reason is None  # the admission that ran late
            unreserved = settlement(first, 0.25, reserved=False)
            await store.apply([unreserved])
            await store.apply([unreserved])
            assert await store.spend(first.key_id, first.period) == (0.25, 0.0)

    asyncio.run(main())


def test_unreserved_settles_bill_once_by_a_short_lived_marker(backend: Backend) -> None:
    """Only the shared store retries a write whose reply was lost: its marker makes the
    retry a no-op, and expires (one key per request must not pile up in Redis)."""

    async def main() -> None:
        async with redis_store(backend.url, 30.0, 60.0, backend.mode) as store:
            unchecked = admission(budget_usd=10.0)  # never reached the store
            once = settlement(unchecked, 2.0, reserved=False)
            await store.apply([once])
            await store.apply([once])
            assert await store.spend(unchecked.key_id, unchecked.period) == (2.0, 0.0)
            marker = f"gw:lim:{{{unchecked.key_id}}}:done:{unchecked.request_id}"
            assert 0 < await store._redis.client.ttl(marker) <= 300

    asyncio.run(main())


def test_every_key_an_admission_writes_expires(backend: Backend) -> None:
    """Rate windows expire with the window, per-period records with the period: a key
    that goes quiet leaves nothing in Redis for ever (the admission sets expiries only on
    what it wrote)."""

    async def main() -> None:
        async with redis_store(backend.url, 30.0, 0.2, backend.mode) as store:
            budgeted = admission(rpm=5, tpm=100, budget_usd=10.0, cost_usd=0.5)
            assert (await store.admit(budgeted)).reason is None  # never settled
            await asyncio.sleep(0.3)  # past the reservation's life: the next gives it up
            assert (await store.admit(another(budgeted))).reason is None
            plain = admission(rpm=5, tpm=100)
            assert (await store.admit(plain)).reason is None
            client = store._redis.client
            present = {}
            for a in (budgeted, plain):
                base, budget = f"gw:lim:{{{a.key_id}}}", f"gw:lim:{{{a.key_id}}}:b:{a.period}"
                names = [f"{base}:req", f"{base}:tok", f"{base}:tokn", budget]
                names += [f"{budget}:resv", f"{budget}:resvt", f"{budget}:lost"]
                ttls = {name: await client.ttl(name) for name in names}
                present[a.key_id] = {n[len(base) + 1 :]: t for n, t in ttls.items() if t != -2}
                assert all(t > 0 for t in present[a.key_id].values()), ttls
            period = budgeted.period
            assert set(present[budgeted.key_id]) == {
                "req", "tok", "tokn", f"b:{period}", f"b:{period}:resv", f"b:{period}:resvt",
                f"b:{period}:lost",
            }  # fmt: skip
            assert set(present[plain.key_id]) == {
                "req", "tok", "tokn", f"b:{period}:resv", f"b:{period}:resvt",
            }  # fmt: skip
            assert all(t <= 30 for n, t in present[plain.key_id].items() if ":" not in n)

    asyncio.run(main())


def test_requests_that_reserve_nothing_are_billed_in_tallies(run: Callable[..., None]) -> None:
    """Per key and day: every request counted, one write (and, in Redis, one settle
    marker) per tally instead of per request, whatever routes the requests took."""

    async def scenario(store: LimitStore) -> None:
        writes = PendingWrites(store, max_pending=100, metrics=Metrics(CollectorRegistry()))
        writes.start()
        caller = Caller(key_id="k-" + uuid.uuid4().hex[:10], name="tallied", team="t")
        markers_before = await _markers(store)
        for _ in range(50):
            writes.bill(caller, 10, 0.5)
        writes.bill(caller, 2, 0.25)
        month = budget_period("month")[0]
        if not store.shared:  # its tallies are applied before a read (Limits.spend)
            await writes.apply_tallies()
            assert await store.spend(caller.key_id, month) == (25.25, 0.0)
        await writes.aclose()
        assert await store.spend(caller.key_id, month) == (25.25, 0.0)
        if isinstance(store, RedisLimitStore):  # new ones (others' may expire meanwhile)
            assert len(await _markers(store) - markers_before) == 1

    run(scenario)


async def _markers(store: LimitStore) -> set[bytes]:
    if not isinstance(store, RedisLimitStore):
        return set()
    return {k async for k in store._redis.client.scan_iter("gw:lim:*:done:*", count=1000)}


def test_the_memory_store_keeps_nothing_per_unreserved_request() -> None:
    """It applies each write once, at once (nothing retries it): no marker to keep, so
    keys without limits do not grow its memory with every request."""

    async def main() -> None:
        store = MemoryLimitStore(30.0, 60.0)
        first = admission()
        await store.apply([settlement(first, 1.0, reserved=False)])
        for _ in range(200):
            await store.apply([settlement(another(first), 1.0, reserved=False)])
        assert await store.spend(first.key_id, first.period) == (201.0, 0.0)
        per_request = [v for v in vars(store).values() if isinstance(v, dict) and len(v) > 100]
        assert per_request == []

    asyncio.run(main())


def test_writes_survive_a_redis_that_lost_its_scripts(backend: Backend) -> None:
    """Restarted or flushed: NOSCRIPT for the batch, scripts loaded, each write applied once."""

    async def main() -> None:
        async with redis_store(backend.url, 30.0, 60.0, backend.mode) as store:
            first = admission(budget_usd=10.0, cost_usd=1.0)
            assert (await store.admit(first)).reason is None
            unchecked = admission(budget_usd=10.0)
            await store._redis.client.script_flush()
            await store.apply([settlement(first, 0.5), settlement(unchecked, 2.0, reserved=False)])
            assert await store.spend(first.key_id, first.period) == (0.5, 0.0)
            assert await store.spend(unchecked.key_id, unchecked.period) == (2.0, 0.0)
            await store._redis.client.script_flush()
            await store.apply([Release(another(first))])  # nothing held: a no-op, no error

    asyncio.run(main())


def test_a_noscript_reload_leaves_no_script_missing(backend: Backend) -> None:
    """After a flush, a batch that needs one script loads them all.

    Loading only that one would leave the settle script missing behind a loaded
    release: the next [settle, release] of a request would run the release first (the
    settle answers NOSCRIPT and is resent after it), giving back the slot of a request
    that was served.
    """

    async def main() -> None:
        async with redis_store(backend.url, 30.0, 60.0, backend.mode) as store:
            first = admission(rpm=1)
            assert (await store.admit(first)).reason is None
            await store._redis.client.script_flush()
            await store.apply([Release(admission())])  # needs (and loads) the release script
            await store.apply([settlement(first, 0.0), Release(first)])
            assert (await store.admit(another(first))).reason == "rpm"

    asyncio.run(main())


def test_dead_reservations_stop_holding_budget_but_late_settles_bill(
    run: Callable[..., None],
) -> None:
    async def scenario(store: LimitStore) -> None:
        first = admission(budget_usd=1.0, cost_usd=1.0)
        assert (await store.admit(first)).reason is None
        assert (await store.admit(another(first))).reason == "budget"
        await asyncio.sleep(0.3)  # past the reservation ttl: its replica is presumed dead
        late = another(first)
        assert (await store.admit(late)).reason is None
        await store.apply([settlement(first, 0.5), settlement(first, 0.5)])
        spent, reserved = await store.spend(first.key_id, first.period)
        assert (spent, reserved) == (0.5, 1.0)  # billed once; only `late` still held

    run(scenario, reservation_ttl_s=0.2)


def test_periods_are_utc_days_months_or_total() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 1, 31, 23, 59, tzinfo=UTC)
    assert budget_period("day", now) == ("d2025-01-31", 2 * 86_400)
    assert budget_period("month", now)[0] == "m2025-01"
    assert budget_period("total", now) == ("total", 0)


def test_deployment_use_is_shared_across_replicas(backend: Backend) -> None:
    deployment = "dep-" + uuid.uuid4().hex[:8]

    async def main() -> None:
        async with (
            redis_store(backend.url, 30.0, 60.0, backend.mode) as store_a,
            redis_store(backend.url, 30.0, 60.0, backend.mode) as store_b,
        ):
            quotas = {deployment: (5, 1000)}
            replica_a = DeploymentQuotas(quotas, 30.0, store_a, interval_s=0.1)
            replica_b = DeploymentQuotas(quotas, 30.0, store_b, interval_s=0.1)
            for _ in range(3):
                replica_a.used(deployment, 1, 100)
            replica_b.used(deployment, 1, 50)
            assert replica_a.headroom(deployment) == (2, 700)  # local view before any sync
            await replica_a.sync_once()
            await replica_b.sync_once()
            assert replica_b.headroom(deployment) == (1, 650)  # sees replica a's use
            await replica_a.sync_once()
            assert replica_a.headroom(deployment) == (1, 650)
            assert replica_a.headroom("not-limited") == (None, None)

    asyncio.run(main())


def test_deployment_headroom_falls_back_to_local_counts_when_redis_is_down() -> None:
    async def main() -> None:
        redis_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
        async with redis_store(redis_url, 30.0, 60.0) as store:
            quotas = DeploymentQuotas({"d": (2, None)}, 30.0, store, interval_s=0.1)
            quotas.used("d", 1, 0)
            started = time.monotonic()
            await quotas.sync_once()
            assert time.monotonic() - started < 1.5
            assert quotas.headroom("d") == (1, None)

    asyncio.run(main())
