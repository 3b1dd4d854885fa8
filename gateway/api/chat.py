"""POST /v1/chat/completions, and the same flow for every dialect that is served by chat
deployments (`endpoint(dialect)`: /v1/completions, ...): authenticate, parse into the
internal request, cache, plan, then the answer (JSON or a stream) in the dialect.

Errors a dialect endpoint raises are answered in the dialect's shape here; chat's go
to the shared handlers (gateway.api.error_handlers), which give the same OpenAI shape."""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.api.deps import (
    BytesResponse,
    admit,
    concluded,
    context_of,
    json_response,
    pipeline_of,
    services_of,
)
from gateway.api.disconnect import ClientDisconnectedError, until_disconnect
from gateway.api.error_handlers import error_response, internal_error
from gateway.api.hot import Endpoint
from gateway.api.prologue import prologue
from gateway.api.sse_response import SSE_CONTENT_TYPE, SSE_HEADERS, SSEResponse
from gateway.cache import Assembler, CacheEntry, CacheLookup, render_hit
from gateway.config import Route, estimate_tokens
from gateway.context import RequestContext
from gateway.dialects import CHAT, Dialect, NativeAnswers
from gateway.errors import GatewayError, InvalidRequestError
from gateway.keys import Caller
from gateway.limits import Reservation, has_limits
from gateway.pipeline import Pipeline
from gateway.routing import RoutingControls
from gateway.services import Services
from gateway.types import ChatRequest
from routers import Plan

CLIENT_CLOSED_REQUEST = 499  # nginx's code: for the access log, the client is gone


def endpoint(dialect: Dialect) -> Endpoint:
    """The endpoint of a dialect served by chat deployments."""
    if dialect is CHAT:

        async def chat_completions(request: Request) -> Response:
            return await serve(request, CHAT)

        return chat_completions

    async def dialect_endpoint(request: Request) -> Response:
        return await serve(request, dialect)

    return answered_in(dialect, dialect_endpoint)


def answered_in(dialect: Dialect, handler: Endpoint) -> Endpoint:
    """`handler` with every error it raises answered in the dialect's shape, with the
    error's own status and headers."""

    async def in_dialect(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 (every error is answered in the dialect)
            error = exc if isinstance(exc, GatewayError) else internal_error(exc)
            context_of(request).error_code = error.error_code
            return error_response(error, dialect.error_body(error))

    return in_dialect


async def serve(request: Request, dialect: Dialect) -> Response:
    first = await prologue(request, dialect.parse)
    req, route, caller, routing, ctx = (
        first.req,
        first.route,
        first.caller,
        first.routing,
        first.ctx,
    )
    ctx.stream = req.stream
    if req.native is not None and req.native.forward:  # chat: one attribute check
        req.native.headers = forwarded_headers(request.scope["headers"], req.native.forward)
    services = first.services
    cache = services.cache
    lookup = None
    both_in_redis = False  # the cache read and an admission can go out in one write
    if cache is not None:
        lookup = cache.lookup(req, route, caller, routing, first.cache, ctx, dialect.name)
        both_in_redis = cache.reads_now and services.limits.store.shared
    if lookup is None:
        return await complete(request, dialect, req, route, routing, caller, None)
    ahead = None
    try:
        if both_in_redis and lookup.read and has_limits(caller):
            ahead = AdmissionAhead(services, ctx, caller, pipeline_of(request), req, route, routing)
        entry = await lookup.find(lambda wait: until_disconnect(request, wait))
        if entry is not None:
            return await serve_hit(request, dialect, entry, req, caller, ahead)
        return await complete(request, dialect, req, route, routing, caller, lookup, ahead)
    except ClientDisconnectedError:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # left while waiting: nothing ran
    except BaseException as error:
        lookup.fail(error)  # waiters of this request get its upstream error
        raise
    finally:
        lookup.close()
        if ahead is not None:
            ahead.close()


class AdmissionAhead:
    """A caller's admission sent with its cache read, in the same write to Redis: one
    round trip for both, not two in a row (a miss, the common case, needs both; at low
    load each round trip is a few hundred µs of a request's latency). Only when the read
    goes out at once (`ResponseCache.reads_now`): under load reads wait to go in one
    MGET for many requests, and admissions sent ahead of them would each take a write
    of their own instead of sharing one when the MGET's answers come back.

    Acted on once the read is known: a miss goes upstream with it, or its refusal; a
    hit takes it if it admitted (settled at zero, as a hit's own admission is; its
    token estimate is not counted in the x-ratelimit headers), else is admitted as any
    hit is (only rpm counts for a hit: a refusal for tokens or budget never refuses an
    answer the cache has). A request that waits for an identical one in flight holds
    its reservation meanwhile, as it would upstream (it goes there if the first fails);
    never acted on (its client left), what it reserved is given back."""

    __slots__ = ("plan", "_services", "_ctx", "_caller", "_task", "_taken")

    def __init__(
        self,
        services: Services,
        ctx: RequestContext,
        caller: Caller,
        pipeline: Pipeline,
        req: ChatRequest,
        route: Route,
        routing: RoutingControls,
    ) -> None:
        self.plan = pipeline.plan_chat(req, route, routing)  # what the estimate comes from
        self._services, self._ctx, self._caller = services, ctx, caller
        # A task: it sends before the cache read's write goes out (the end of this turn).
        self._task = asyncio.ensure_future(services.limits.ask(caller, *estimate(self.plan, req)))
        self._taken = False

    async def for_upstream(self) -> Reservation:
        """The reservation (or the refusal raised) of a request that goes upstream."""
        self._taken = True
        return await concluded(self._services, self._ctx, self._caller, await self._task)

    async def for_hit(self) -> Reservation | None:
        """The reservation if the admission went through; else None (given back)."""
        self._taken = True
        answer = await self._task
        if answer.admitted:
            return await concluded(self._services, self._ctx, self._caller, answer, hit=True)
        self._services.limits.withdraw(answer)
        return None

    def close(self) -> None:
        if self._taken:
            return
        if not self._task.done():
            self._task.cancel()  # `Limits.ask` gives back what its script may have reserved
        elif not self._task.cancelled() and self._task.exception() is None:
            self._services.limits.withdraw(self._task.result())


async def complete(
    request: Request,
    dialect: Dialect,
    req: ChatRequest,
    route: Route,
    routing: RoutingControls,
    caller: Caller,
    lookup: CacheLookup | None,
    ahead: AdmissionAhead | None = None,
) -> Response:
    """Plan, admit and call upstream (this request leads, or the cache is not involved)."""
    services, pipeline, ctx = services_of(request), pipeline_of(request), context_of(request)
    plan = ahead.plan if ahead is not None else pipeline.plan_chat(req, route, routing)
    ctx.policy = plan.policy
    reservation = None  # a caller without limits: nothing to check or reserve
    if ahead is not None:
        reservation = await ahead.for_upstream()
    elif has_limits(caller):
        reservation = await admit(services, ctx, caller, *estimate(plan, req))
    log_payloads = route.log_payloads or caller.log_payloads
    if log_payloads:
        ctx.payload_request = req.body
    try:
        if req.stream:
            stream = await until_disconnect(
                request, pipeline.chat_stream(req, route, plan, caller, reservation, ctx)
            )
            if dialect is not CHAT:
                stream.encode_with(dialect.stream(req))
            if log_payloads:
                ctx.payload_response = assembler = Assembler()
                stream.observe(assembler)
            body = lookup.relay(stream) if lookup is not None else stream.body()
            return SSEResponse(body, ctx.response_headers())
        response = await until_disconnect(
            request, pipeline.chat(req, route, plan, caller, reservation, ctx)
        )
    except ClientDisconnectedError:
        await pipeline.bill_abandoned(req.prompt_chars(), caller, reservation, ctx)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException:
        await services.limits.release(reservation)
        raise
    if log_payloads:
        ctx.payload_response = response.body
    if dialect is not CHAT:
        if lookup is not None:
            await lookup.store_response(response)
        # The upstream's own answer when it was asked in this dialect (ChatRequest.native).
        content = response.native
        if content is None:
            content = dialect.answer(response.body, req)
        elif isinstance(dialect, NativeAnswers):
            content = dialect.native_answer(content)
        return BytesResponse(content, headers=ctx.response_headers())
    if lookup is None:
        return json_response(response.body, headers=ctx.response_headers())
    content = await lookup.store_response(response)
    return BytesResponse(content, headers=ctx.response_headers())


async def serve_hit(
    request: Request,
    dialect: Dialect,
    entry: CacheEntry,
    req: ChatRequest,
    caller: Caller,
    ahead: AdmissionAhead | None,
) -> Response:
    """A stored answer, or one an identical request in flight produced: costs nothing."""
    services, ctx = services_of(request), context_of(request)
    reservation = await ahead.for_hit() if ahead is not None else None
    if reservation is None and caller.rpm is not None:
        # A hit counts as a request, but uses no tokens and no budget.
        reservation = await admit(services, ctx, caller, 0, 0.0)
    assert services.cache is not None
    services.cache.account_hit(entry, ctx)
    await services.limits.settle(ctx, caller, reservation)
    content = render_hit(entry, req, dialect)
    if req.stream:
        headers = [*SSE_HEADERS, *ctx.response_headers()]
        return BytesResponse(content, headers=headers, content_type=SSE_CONTENT_TYPE)
    return BytesResponse(content, headers=ctx.response_headers())


# A forwarded header's value: comma-separated tokens (versions, beta names), nothing else.
_TOKEN_LIST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:[ \t]*,[ \t]*[A-Za-z0-9][A-Za-z0-9._-]*)*")
_MAX_FORWARDED_CHARS = 1024


def forwarded_headers(raw: list[tuple[bytes, bytes]], names: tuple[str, ...]) -> dict[str, str]:
    """The client's headers a dialect forwards with its native body (`names`, lower-case;
    repeated ones joined by commas), each value a list of tokens: anything else is a 400
    naming the header (it is never sent on as it came)."""
    found: dict[str, list[str]] = {}
    for key, value in raw:
        name = key.decode("latin-1")
        if name in names:
            found.setdefault(name, []).append(value.decode("latin-1").strip())
    out: dict[str, str] = {}
    for name, values in found.items():
        joined = ",".join(v for v in values if v)
        if not joined:
            continue
        if len(joined) > _MAX_FORWARDED_CHARS or _TOKEN_LIST.fullmatch(joined) is None:
            raise InvalidRequestError(
                f"{name}: expected comma-separated tokens (letters, digits, '.', '_', '-').",
                param=name,
            )
        out[name] = joined
    return out


def estimate(plan: Plan, req: ChatRequest) -> tuple[int, float]:
    """(tokens, USD) this request is expected to cost on the first planned deployment."""
    if not plan.ordered:
        return 0, 0.0
    breakdown = plan.ordered[0].breakdown
    tokens = estimate_tokens(req.prompt_chars()) + int(breakdown.get("expected_output_tokens", 0))
    return tokens, float(breakdown.get("expected_cost_usd", 0.0))


routes = [HTTPRoute("/v1/chat/completions", endpoint(CHAT), methods=["POST"])]
