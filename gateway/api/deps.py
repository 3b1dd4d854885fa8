"""What every route needs from a request: services, context, caller, a bounded body."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from gateway import jsonutil
from gateway.api.http_protocol import Header, body_buffered
from gateway.context import RequestContext
from gateway.errors import (
    DatabaseUnavailableError,
    GatewayError,
    IncompleteBodyError,
    PayloadTooLargeError,
    RequestTimeoutError,
)
from gateway.keys import Caller
from gateway.limits import Answer, Reservation
from gateway.pipeline import Pipeline
from gateway.services import Services


# From the scope's state dict itself: `request.state` wraps it in an object whose
# attribute lookups are Python calls, several per request on the hot path.
def services_of(request: Request) -> Services:
    services: Services = request.scope["state"]["services"]
    return services


def pipeline_of(request: Request) -> Pipeline:
    pipeline: Pipeline = request.scope["state"]["pipeline"]
    return pipeline


def context_of(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["state"]["ctx"]
    return ctx


def header(scope: Scope, name: bytes) -> str | None:
    """A request header (the first) by its lower-case name, read from the scope:
    `request.headers` builds a Headers object whose `get` goes through the Mapping ABC
    per call."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in raw:
        if key == name:
            return value.decode("latin-1")
    return None


def authorization(scope: Scope) -> str | None:
    """The request's `Authorization` header, or else its `x-api-key` as a bearer token
    (Anthropic's SDKs and Claude Code send the key there)."""
    value = header(scope, b"authorization")
    if value is None:
        api_key = header(scope, b"x-api-key")
        if api_key:
            return f"Bearer {api_key}"
    return value


def authenticate(request: Request) -> Caller:
    """The caller (its key in `Authorization: Bearer`, or else in `x-api-key`), with one
    of its key's concurrency slots when it has a bound (given back when the request is
    done: gateway.api.middleware)."""
    keys = services_of(request).keys
    caller = keys.authenticate(authorization(request.scope))
    ctx = context_of(request)
    ctx.key_id, ctx.key_name, ctx.team = caller.key_id, caller.name, caller.team
    if caller.max_concurrent is not None:
        keys.concurrency.acquire(caller)
        ctx.key_slot = caller.key_id
    return caller


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """Reads at most `limit_bytes`, chunked bodies included; 413 past that (rule 14).
    A body still arriving gets `server.body_timeout_s` in all (408 past it); one that is
    already here (most) is read without a timer."""
    declared = header(request.scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(f"Request body is larger than {limit_bytes} bytes.")
    if body_buffered(request.receive):
        return await _read(request, limit_bytes)
    timeout_s = services_of(request).config.server.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(request, limit_bytes)
    except TimeoutError:
        raise RequestTimeoutError(
            f"The request body did not arrive within {timeout_s:g} s."
        ) from None


async def _read(request: Request, limit_bytes: int) -> bytes:
    # From `receive` itself: Starlette's `request.stream()` is an async generator, a
    # few percent of a request's CPU for the one or two messages a body takes.
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            raise IncompleteBodyError("The client closed the connection mid-body.")
        part = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(part)
        if size > limit_bytes:
            raise PayloadTooLargeError(f"Request body is larger than {limit_bytes} bytes.")
        parts.append(part)
    return b"".join(parts)  # one part: the same bytes object, no copy


def json_response(body: object, status: int = 200, headers: list[Header] | None = None) -> Response:
    return BytesResponse(jsonutil.dumps(body), status, headers)


class BytesResponse(Response):
    """A finished body with raw, lower-case headers: Starlette's Response without its
    header normalisation (a few percent of a request's CPU). JSON unless told."""

    body: bytes

    def __init__(
        self,
        content: bytes,
        status_code: int = 200,
        headers: list[Header] | None = None,
        content_type: bytes = b"application/json",
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.body = content
        self.raw_headers = [
            (b"content-length", b"%d" % len(content)),
            (b"content-type", content_type),
        ]
        if headers:
            self.raw_headers += headers


async def admit(
    services: Services, ctx: RequestContext, caller: Caller, tokens: int, cost_usd: float
) -> Reservation:
    """The caller's admission (for a caller with limits), its x-ratelimit-* headers set
    on the request's answer."""
    answer = await services.limits.ask(caller, tokens, cost_usd)
    return await concluded(services, ctx, caller, answer)


async def concluded(
    services: Services, ctx: RequestContext, caller: Caller, answer: Answer, hit: bool = False
) -> Reservation:
    """An admission's answer acted on (`Limits.conclude`), its headers set as `admit`'s."""
    reservation = await services.limits.conclude(caller, answer, hit)
    ctx.rate_headers = rate_limit_headers(caller, reservation)
    return reservation


def rate_limit_headers(caller: Caller, reservation: Reservation | None) -> list[Header] | None:
    """OpenAI's x-ratelimit-* headers from the admission that just ran (no Redis call of
    their own): what is left of the key's rpm and tpm limits, and when more frees up."""
    if reservation is None:
        return None
    headers: list[Header] = []
    for unit, limit, room in (
        (b"requests", caller.rpm, reservation.requests),
        (b"tokens", caller.tpm, reservation.tokens),
    ):
        if limit is None or room is None:
            continue
        headers += [
            (b"x-ratelimit-limit-" + unit, b"%d" % limit),
            (b"x-ratelimit-remaining-" + unit, b"%d" % room.left),
            (b"x-ratelimit-reset-" + unit, _duration(room.reset_s)),
        ]
    return headers or None


def _duration(seconds: float) -> bytes:
    """OpenAI's form: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return b"%dms" % round(seconds * 1000)
    if seconds < 60:
        return (b"%.3f" % seconds).rstrip(b"0").rstrip(b".") + b"s"
    minutes, rest = divmod(round(seconds), 60)
    return b"%dm%ds" % (minutes, rest)


def records_unavailable() -> GatewayError:
    """The 503 an admin endpoint answers while SQL is unreachable (retryable)."""
    return DatabaseUnavailableError(
        "The database (the system of record) is unreachable; try again shortly.",
        retry_after_s=2,
    )
