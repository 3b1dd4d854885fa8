from __future__ import annotations

import pytest

from gateway.config.pricing import Prices, cost_usd, estimate_tokens

MINI = Prices(input_per_mtok_usd=0.15, output_per_mtok_usd=0.60, cached_input_per_mtok_usd=0.075)
SONNET = Prices(
    input_per_mtok_usd=3.0,
    output_per_mtok_usd=15.0,
    cached_input_per_mtok_usd=0.3,
    cache_write_per_mtok_usd=3.75,
)
NO_CACHE_PRICES = Prices(input_per_mtok_usd=2.0, output_per_mtok_usd=8.0)


@pytest.mark.parametrize(
    ("counts", "prices", "expected"),
    [
        pytest.param((1000, 500, 0, 0), MINI, 0.00045, id="plain-input-output"),
        pytest.param(
            (1000, 500, 400, 0),
            MINI,
            (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6,
            id="cached-input-at-cached-rate",
        ),
        pytest.param(
            (1000, 500, 400, 0),
            NO_CACHE_PRICES,
            (1000 * 2.0 + 500 * 8.0) / 1e6,
            id="cached-without-cached-price-is-normal-rate",
        ),
        pytest.param(
            (10_000, 200, 2000, 5000),
            SONNET,
            (3000 * 3.0 + 2000 * 0.3 + 5000 * 3.75 + 200 * 15.0) / 1e6,
            id="cache-write-at-write-rate",
        ),
        pytest.param(
            (1000, 0, 0, 1000),
            NO_CACHE_PRICES,
            1000 * 2.0 / 1e6,
            id="cache-write-without-write-price-is-normal-rate",
        ),
        pytest.param((0, 0, 0, 0), SONNET, 0.0, id="zero-usage"),
        pytest.param(
            (100, 10, 300, 0),
            MINI,
            (300 * 0.075 + 10 * 0.60) / 1e6,
            id="input-smaller-than-cached-no-negative",
        ),
        pytest.param((1_000_000, 1_000_000, 0, 0), SONNET, 18.0, id="one-million-each-way"),
    ],
)
def test_cost_usd(counts: tuple[int, int, int, int], prices: Prices, expected: float) -> None:
    """counts: input (cached and cache-write included), output, cached, cache-write."""
    assert cost_usd(*counts, prices) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_cost_is_never_negative() -> None:
    assert cost_usd(5, 0, 10, 10, Prices(1.0, 1.0, cached_input_per_mtok_usd=0.0)) >= 0.0


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
