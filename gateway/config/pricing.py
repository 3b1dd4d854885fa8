"""Pure request cost arithmetic. Prices are USD per million tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

_TOKENS_PER_MTOK = 1_000_000
# Rough chars-per-token ratio for English text with BPE tokenizers; only used when the
# upstream reports no usage, so the result is flagged as estimated.
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Prices:
    input_per_mtok_usd: float
    output_per_mtok_usd: float
    cached_input_per_mtok_usd: float | None = None  # None -> priced as normal input
    cache_write_per_mtok_usd: float | None = None  # None -> priced as normal input


def cost_usd(
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    cache_write_tokens: int,
    prices: Prices,
) -> float:
    """USD cost of one request. OpenAI's convention: `input_tokens` (prompt_tokens)
    already includes the cached and cache-write tokens, which are carved out of it and
    priced at their own rates; `output_tokens` includes reasoning tokens."""
    cached = max(cached_tokens, 0)
    cache_write = max(cache_write_tokens, 0)
    # Providers occasionally report more cached than total prompt tokens; never bill < 0.
    uncached = max(input_tokens - cached - cache_write, 0)
    cached_rate = _or_default(prices.cached_input_per_mtok_usd, prices.input_per_mtok_usd)
    write_rate = _or_default(prices.cache_write_per_mtok_usd, prices.input_per_mtok_usd)
    # Sum token*price first and divide once: fewer rounding steps than per-token prices.
    total = math.fsum(
        (
            uncached * prices.input_per_mtok_usd,
            cached * cached_rate,
            cache_write * write_rate,
            max(output_tokens, 0) * prices.output_per_mtok_usd,
        )
    )
    return total / _TOKENS_PER_MTOK


def exact_cost_usd(
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    cache_write_tokens: int,
    prices: Prices,
) -> Decimal:
    """`cost_usd` in exact decimal arithmetic, for the spend ledger: each price is taken
    as the decimal it is written as (repr of the float), so sums are exact to the digit."""
    cached = max(cached_tokens, 0)
    cache_write = max(cache_write_tokens, 0)
    uncached = max(input_tokens - cached - cache_write, 0)
    cached_rate = _or_default(prices.cached_input_per_mtok_usd, prices.input_per_mtok_usd)
    write_rate = _or_default(prices.cache_write_per_mtok_usd, prices.input_per_mtok_usd)
    total = (
        uncached * _decimal(prices.input_per_mtok_usd)
        + cached * _decimal(cached_rate)
        + cache_write * _decimal(write_rate)
        + max(output_tokens, 0) * _decimal(prices.output_per_mtok_usd)
    )
    return total / _TOKENS_PER_MTOK


def _decimal(price: float) -> Decimal:
    return Decimal(repr(price))


def estimate_tokens(text_chars: int) -> int:
    """Cheap token estimate: ceil(chars / 4), so any non-empty text counts at least 1."""
    if text_chars <= 0:
        return 0
    return -(-text_chars // _CHARS_PER_TOKEN)


def _or_default(value: float | None, default: float) -> float:
    return default if value is None else value
