"""The one place that knows which JSON library runs on the hot path (orjson)."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def dumps(value: object) -> bytes:
    return orjson.dumps(value)


def dumps_canonical(value: object) -> bytes:
    """Sorted keys, no spaces: equal values give equal bytes (cache keys)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
