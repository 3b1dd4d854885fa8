from __future__ import annotations

import pytest

from gateway.pricing import Prices, TokenUsage, cost_usd, estimate_tokens

MINI = Prices(input_per_mtok_usd=0.15, output_per_mtok_usd=0.60, cached_input_per_mtok_usd=0.075)
SONNET = Prices(
    input_per_mtok_usd=3.0,
    output_per_mtok_usd=15.0,
    cached_input_per_mtok_usd=0.3,
    cache_write_per_mtok_usd=3.75,
)
NO_CACHE_PRICES = Prices(input_per_mtok_usd=2.0, output_per_mtok_usd=8.0)


@pytest.mark.parametrize(
    ("usage", "prices", "expected"),
    [
        pytest.param(TokenUsage(1000, 500), MINI, 0.00045, id="plain-input-output"),
        pytest.param(
            TokenUsage(1000, 500, cached_input_tokens=400),
            MINI,
            (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6,
            id="cached-input-at-cached-rate",
        ),
        pytest.param(
            TokenUsage(1000, 500, cached_input_tokens=400),
            NO_CACHE_PRICES,
            (1000 * 2.0 + 500 * 8.0) / 1e6,
            id="cached-without-cached-price-is-normal-rate",
        ),
        pytest.param(
            TokenUsage(10_000, 200, cached_input_tokens=2000, cache_write_tokens=5000),
            SONNET,
            (3000 * 3.0 + 2000 * 0.3 + 5000 * 3.75 + 200 * 15.0) / 1e6,
            id="cache-write-at-write-rate",
        ),
        pytest.param(
            TokenUsage(1000, 0, cache_write_tokens=1000),
            NO_CACHE_PRICES,
            1000 * 2.0 / 1e6,
            id="cache-write-without-write-price-is-normal-rate",
        ),
        pytest.param(TokenUsage(0, 0), SONNET, 0.0, id="zero-usage"),
        pytest.param(
            TokenUsage(100, 10, cached_input_tokens=300),
            MINI,
            (300 * 0.075 + 10 * 0.60) / 1e6,
            id="input-smaller-than-cached-no-negative",
        ),
        pytest.param(TokenUsage(1_000_000, 1_000_000), SONNET, 18.0, id="one-million-each-way"),
    ],
)
def test_cost_usd(usage: TokenUsage, prices: Prices, expected: float) -> None:
    assert cost_usd(usage, prices) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_cost_is_never_negative() -> None:
    usage = TokenUsage(5, 0, cached_input_tokens=10, cache_write_tokens=10)
    assert cost_usd(usage, Prices(1.0, 1.0, cached_input_per_mtok_usd=0.0)) >= 0.0


def test_estimated_flag_does_not_change_cost() -> None:
    exact = cost_usd(TokenUsage(1000, 500), MINI)
    assert cost_usd(TokenUsage(1000, 500, estimated=True), MINI) == exact


@pytest.mark.parametrize(
    ("chars", "tokens"),
    [
        pytest.param(0, 0, id="empty"),
        pytest.param(-3, 0, id="negative"),
        pytest.param(1, 1, id="one-char-is-one-token"),
        pytest.param(4, 1, id="exactly-four"),
        pytest.param(5, 2, id="rounds-up"),
        pytest.param(4000, 1000, id="large"),
    ],
)
def test_estimate_tokens(chars: int, tokens: int) -> None:
    assert estimate_tokens(chars) == tokens
