"""The response cache: lookup, store, key, coalescing of identical requests, replay of a
stored answer.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.cache.lookup import (
    DEFAULT_CACHE_CONTROLS,
    CacheControls,
    CacheLookup,
    ResponseCache,
    build_response_cache,
    render_hit,
)
from gateway.cache.replay import Assembler
from gateway.cache.store import CacheEntry

__all__ = [
    "Assembler",
    "DEFAULT_CACHE_CONTROLS",
    "CacheControls",
    "CacheEntry",
    "CacheLookup",
    "ResponseCache",
    "build_response_cache",
    "render_hit",
]
