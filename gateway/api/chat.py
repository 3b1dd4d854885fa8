"""POST /v1/chat/completions: authenticate, parse, cache, plan, then JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.api.deps import (
    BytesResponse,
    admit,
    context_of,
    json_response,
    pipeline_of,
    services_of,
)
from gateway.api.disconnect import ClientDisconnectedError, until_disconnect
from gateway.api.prologue import prologue
from gateway.api.sse_response import SSE_CONTENT_TYPE, SSE_HEADERS, SSEResponse
from gateway.cache import Assembler, CacheEntry, CacheLookup, render_hit
from gateway.config import Route, estimate_tokens
from gateway.dialects import parse_chat_request
from gateway.keys import Caller
from gateway.limits import has_limits
from gateway.routing import RoutingControls
from gateway.types import ChatRequest
from routers import Plan

CLIENT_CLOSED_REQUEST = 499  # nginx's code: for the access log, the client is gone


async def chat_completions(request: Request) -> Response:
    first = await prologue(request, parse_chat_request)
    req, route, caller, routing, ctx = (
        first.req,
        first.route,
        first.caller,
        first.routing,
        first.ctx,
    )
    ctx.stream = req.stream
    cache = first.services.cache
    lookup = None
    if cache is not None:
        lookup = cache.lookup(req, route, caller, routing, first.cache, ctx)
    if lookup is None:
        return await complete(request, req, route, routing, caller, None)
    try:
        entry = await lookup.find(lambda wait: until_disconnect(request, wait))
        if entry is not None:
            return await serve_hit(request, entry, req, caller)
        return await complete(request, req, route, routing, caller, lookup)
    except ClientDisconnectedError:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # left while waiting: nothing ran
    except BaseException as error:
        lookup.fail(error)  # waiters of this request get its upstream error
        raise
    finally:
        lookup.close()


async def complete(
    request: Request,
    req: ChatRequest,
    route: Route,
    routing: RoutingControls,
    caller: Caller,
    lookup: CacheLookup | None,
) -> Response:
    """Plan, admit and call upstream (this request leads, or the cache is not involved)."""
    services, pipeline, ctx = services_of(request), pipeline_of(request), context_of(request)
    plan = pipeline.plan_chat(req, route, routing)
    ctx.policy = plan.policy
    reservation = None  # a caller without limits: nothing to check or reserve
    if has_limits(caller):
        reservation = await admit(services, ctx, caller, *estimate(plan, req))
    log_payloads = route.log_payloads or caller.log_payloads
    if log_payloads:
        ctx.payload_request = req.body
    try:
        if req.stream:
            stream = await until_disconnect(
                request, pipeline.chat_stream(req, route, plan, caller, reservation, ctx)
            )
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
    if lookup is None:
        return json_response(response.body, headers=ctx.response_headers())
    content = await lookup.store_response(response)
    return BytesResponse(content, headers=ctx.response_headers())


async def serve_hit(
    request: Request, entry: CacheEntry, req: ChatRequest, caller: Caller
) -> Response:
    """A stored answer, or one an identical request in flight produced: costs nothing."""
    services, ctx = services_of(request), context_of(request)
    reservation = None
    if caller.rpm is not None:  # a hit counts as a request, but uses no tokens and no budget
        reservation = await admit(services, ctx, caller, 0, 0.0)
    assert services.cache is not None
    services.cache.account_hit(entry, ctx)
    await services.limits.settle(ctx, caller, reservation)
    content = render_hit(entry, req.stream, req.include_usage)
    if req.stream:
        headers = [*SSE_HEADERS, *ctx.response_headers()]
        return BytesResponse(content, headers=headers, content_type=SSE_CONTENT_TYPE)
    return BytesResponse(content, headers=ctx.response_headers())


def estimate(plan: Plan, req: ChatRequest) -> tuple[int, float]:
    """(tokens, USD) this request is expected to cost on the first planned deployment."""
    if not plan.ordered:
        return 0, 0.0
    breakdown = plan.ordered[0].breakdown
    tokens = estimate_tokens(req.prompt_chars()) + int(breakdown.get("expected_output_tokens", 0))
    return tokens, float(breakdown.get("expected_cost_usd", 0.0))


routes = [HTTPRoute("/v1/chat/completions", chat_completions, methods=["POST"])]
