"""Pure parts of the pipeline: retry budget, live stats and cooldowns, SSE decoding,
request validation and upstream error classification."""

from __future__ import annotations

import time

import pytest

from gateway.config import RequestLimits
from gateway.config.catalog import Deployment, Route
from gateway.config.pricing import Prices
from gateway.dialects.openai_chat import parse_chat_request
from gateway.errors import (
    InvalidRequestError,
    UpstreamAuthError,
    UpstreamContextLengthError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.providers.base import classify_status, retry_after_s
from gateway.routing.planning import DEFAULT_ROUTING, Planner, route_request
from gateway.routing.retry_budget import RetryBudget
from gateway.routing.stats import StatsStore
from gateway.transport.sse import SSEDecoder


def test_retry_budget_floor_and_ratio() -> None:
    budget = RetryBudget(ratio=0.2, minimum=2)
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]  # the floor
    for _ in range(20):
        budget.request_started()
    assert budget.try_acquire() and budget.try_acquire()  # 20 active x 0.2 = 4 concurrent
    assert not budget.try_acquire()
    budget.release()
    assert budget.try_acquire()


def test_cooldown_after_consecutive_failures_and_half_open() -> None:
    stats = StatsStore(cooldown_failures=2, cooldown_s=30)
    assert not stats.failure("d")
    assert stats.failure("d") and stats.in_cooldown("d")
    stats.get("d").cooldown_until = time.time() - 1  # cooldown over: half-open
    assert stats.failure("d")  # one more failure trips it again at once
    stats.success("d", ttft_s=0.1, output_tokens=10, total_s=0.2)
    stats.get("d").cooldown_until = 0
    assert not stats.failure("d")  # a success reset the streak


def test_rate_limit_cooldown_uses_retry_after() -> None:
    stats = StatsStore(cooldown_failures=5, cooldown_s=30)
    assert stats.failure("d", cooldown_s=2.0)
    assert 1.5 < stats.get("d").cooldown_until - time.time() <= 2.0


def test_ewma_latency() -> None:
    stats = StatsStore(cooldown_failures=3, cooldown_s=1)
    stats.success("d", ttft_s=1.0, output_tokens=10, total_s=2.0)
    stats.success("d", ttft_s=2.0, output_tokens=10, total_s=3.0)
    snap = stats.snapshot("d")
    assert snap.ttft_ewma_s == pytest.approx(1.2)
    assert snap.per_token_ewma_s == pytest.approx(0.1)


def test_snapshots_are_reused_only_while_nothing_changed() -> None:
    """The planner keeps a deployment's Candidate while its snapshot is the same object:
    any write, by whichever path (the store, stats_sync's setattr), must show."""
    stats = StatsStore(cooldown_failures=3, cooldown_s=1)
    first = stats.snapshot("d")
    assert stats.snapshot("d") is first
    stats.started("d")
    busy = stats.snapshot("d")
    assert busy is not first and busy.in_flight == 1
    stats.ended("d")
    assert stats.snapshot("d").in_flight == 0
    stats.get("d").cooldown_until = time.time() + 5  # as stats_sync writes a replica's
    assert stats.snapshot("d").cooldown_until > time.time()
    setattr(stats.get("d"), "ttft_ewma_s", 0.3)  # noqa: B010  # stats_sync's own way
    assert stats.snapshot("d").ttft_ewma_s == 0.3


def test_planner_sees_every_change_of_the_live_stats() -> None:
    deployments = {
        name: Deployment(
            id=f"p/{name}",
            name=name,
            provider="p",
            kind="openai",
            model=name,
            mode="chat",
            prices=Prices(input_per_mtok_usd=price, output_per_mtok_usd=price),
            context_window_tokens=1000,
            max_output_tokens=None,
            capabilities=frozenset(),
        )
        for name, price in (("a", 1.0), ("b", 2.0))
    }
    by_id = {d.id: d for d in deployments.values()}
    route = Route("r", "cheapest", ("p/a", "p/b"), {}, "chat")
    stats = StatsStore(cooldown_failures=1, cooldown_s=30)
    planner = Planner({"r": route}, by_id, stats)
    request = route_request(40, 16, frozenset(), DEFAULT_ROUTING)

    def order() -> list[str]:
        plan = planner.plan(route, request)
        return [r.candidate.deployment_id for r in plan.ordered]

    assert order() == ["p/a", "p/b"]
    first = planner.plan(route, request).ordered[1].candidate
    assert planner.plan(route, request).ordered[1].candidate is first  # unchanged: kept
    stats.failure("p/a")  # cooldown: out of the plan at once
    assert order() == ["p/b"]
    stats.get("p/a").cooldown_until = 0.0
    assert order() == ["p/a", "p/b"]


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = [
        b": keep-alive\n",
        b"event: message_start\n",
        b'data: {"a":\n',
        b"data: 1}\n",
        b"\n",
        b"data: [DONE]\r\n",
        b"\r\n",
    ]
    events = [e for e in (decoder.feed_line(line) for line in lines) if e is not None]
    assert [(e.event, e.data) for e in events] == [("message_start", '{"a":\n1}'), (None, "[DONE]")]


def test_sse_decoder_field_rules() -> None:
    """WHATWG: one space after the colon is dropped, a bare field name has an empty
    value, unknown fields are ignored, and data lines join with newlines."""
    decoder = SSEDecoder()
    lines = [
        b"data:no-space\n",
        b"data:  two spaces\r\n",
        b"data\n",
        b"data: \n",
        b"id: 7\n",
        "data: caf\u00e9 \u2713\n".encode(),
        b"\n",
        b"event:ping\n",
        b"\n",  # an event with no data is not dispatched
    ]
    events = [e for e in (decoder.feed_line(line) for line in lines) if e is not None]
    assert [(e.event, e.data) for e in events] == [
        (None, "no-space\n two spaces\n\n\ncaf\u00e9 \u2713")
    ]


@pytest.mark.parametrize(
    ("status", "message", "headers", "expected"),
    [
        (429, "slow down", {"retry-after": "3"}, UpstreamRateLimitedError),
        (500, "boom", {}, UpstreamUnavailableError),
        (529, "overloaded", {}, UpstreamUnavailableError),
        (504, "", {}, UpstreamTimeoutError),
        (401, "bad key sk-123", {}, UpstreamAuthError),
        (403, "", {}, UpstreamAuthError),
        (400, "This model's maximum context length is 8192 tokens", {}, UpstreamContextLengthError),
        (400, "Invalid 'temperature'", {}, UpstreamRejectedError),
        (422, "bad", {}, UpstreamRejectedError),
    ],
    ids=["429", "500", "529", "504", "401", "403", "context", "400", "422"],
)
def test_classify_status(
    status: int, message: str, headers: dict[str, str], expected: type[Exception]
) -> None:
    error = classify_status(status, message, headers)
    assert type(error) is expected
    assert "sk-123" not in error.message  # our key's refusal text is never passed on


def test_retry_after_parsing() -> None:
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None


def test_validation_keeps_unknown_params_and_flags_capabilities() -> None:
    raw = (
        b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", '
        b'"image_url": {"url": "data:x"}}]}], "stream": true, "stream_options": '
        b'{"include_usage": true}, "custom_vendor_flag": 1, "response_format": '
        b'{"type": "json_schema", "json_schema": {"name": "x"}}, "max_completion_tokens": 5}'
    )
    req = parse_chat_request(raw, RequestLimits())
    assert req.body["custom_vendor_flag"] == 1 and req.include_usage and req.max_tokens == 5
    assert req.required_capabilities() == {"vision", "json_schema", "stream"}


def test_validation_limits_messages() -> None:
    raw = (
        b'{"model": "m", "messages": [' + b",".join([b'{"role":"user","content":"x"}'] * 3) + b"]}"
    )
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(raw, RequestLimits(max_messages=2))
    assert info.value.param == "messages"
