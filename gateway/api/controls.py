"""Per-request routing and cache controls from a request's `x-gateway-*` and
`cache-control` headers. A malformed value is a 400 naming the header."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers

from gateway.cache import DEFAULT_CACHE_CONTROLS, CacheControls
from gateway.errors import InvalidRequestError
from gateway.routing import DEFAULT_ROUTING, RoutingControls

Controls = tuple[RoutingControls, CacheControls]
_DEFAULTS: Controls = (DEFAULT_ROUTING, DEFAULT_CACHE_CONTROLS)


def controls_from_headers(raw: Sequence[tuple[bytes, bytes]]) -> Controls:
    """From a request's raw headers (ASGI's: lower-case names). Most requests send no
    control: one pass over the names, without decoding them or a lookup per control."""
    for name, _ in raw:
        if name.startswith(b"x-gateway-") or name == b"cache-control":
            break
    else:
        return _DEFAULTS
    headers = Headers(raw=list(raw))
    cache_control = (headers.get("cache-control") or "").lower()
    routing = RoutingControls(
        policy=headers.get("x-gateway-policy") or None,
        max_cost_usd=_float_header(headers, "x-gateway-max-cost-usd"),
        allowed_providers=_set_header(headers, "x-gateway-providers"),
        excluded_providers=_set_header(headers, "x-gateway-exclude-providers") or frozenset(),
        task_tag=headers.get("x-gateway-task") or None,
    )
    cache = CacheControls(
        read="no-cache" not in cache_control and "no-store" not in cache_control,
        write="no-store" not in cache_control,
        ttl_s=_int_header(headers, "x-gateway-cache-ttl"),
    )
    return routing, cache


def _float_header(headers: Headers, name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequestError(f"Header {name} must be a number.", param=name) from None
    if number < 0:
        raise InvalidRequestError(f"Header {name} must not be negative.", param=name)
    return number


def _int_header(headers: Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 9):
        raise InvalidRequestError(f"Header {name} must be a whole number of seconds.", param=name)
    return int(value)


def _set_header(headers: Headers, name: str) -> frozenset[str] | None:
    value = headers.get(name)
    if not value:
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())
