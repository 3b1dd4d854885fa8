"""POST /v1/chat/completions: authenticate, parse, cache, plan, then JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.api.controls import controls_from_headers
from gateway.api.deps import (
    BytesResponse,
    authenticate,
    context_of,
    json_response,
    pipeline_of,
    read_body,
    services_of,
)
from gateway.api.disconnect import ClientDisconnectedError, until_disconnect
from gateway.api.sse_response import SSE_CONTENT_TYPE, SSE_HEADERS, SSEResponse
from gateway.cache import CacheEntry, CacheLookup, render_hit
from gateway.config import Route, estimate_tokens
from gateway.dialects import parse_chat_request
from gateway.keys import Caller
from gateway.limits import has_limits
from gateway.routing import RequestControls
from gateway.types import ChatRequest
from routers import Plan

CLIENT_CLOSED_REQUEST = 499  # nginx's code: for the access log, the client is gone


async def chat_completions(request: Request) -> Response:
    services, ctx = services_of(request), context_of(request)
    caller = authenticate(request)
    raw = await read_body(request, services.config.server.max_body_bytes)
    req = parse_chat_request(raw, services.request_limits)
    route = services.catalog.route_for(req.model)
    ctx.route, ctx.stream = route.name, req.stream
    caller.check_route(route.name)
    controls = controls_from_headers(request.scope["headers"])
    cache = services.cache
    lookup = cache.lookup(req, route, caller, controls, ctx) if cache is not None else None
    if lookup is None:
        return await complete(request, req, route, controls, caller, None)
    try:
        entry = await lookup.find(lambda wait: until_disconnect(request, wait))
        if entry is not None:
            return await serve_hit(request, entry, req, caller)
        return await complete(request, req, route, controls, caller, lookup)
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
    controls: RequestControls,
    caller: Caller,
    lookup: CacheLookup | None,
) -> Response:
    """Plan, admit and call upstream (this request leads, or the cache is not involved)."""
    services, pipeline, ctx = services_of(request), pipeline_of(request), context_of(request)
    plan = pipeline.plan_chat(req, route, controls)
    ctx.policy = plan.policy
    if has_limits(caller):  # else nothing to check or reserve: no estimate, no coroutine
        await services.limits.admit(ctx, caller, *estimate(plan, req))
    try:
        if req.stream:
            stream = await until_disconnect(
                request, pipeline.chat_stream(req, route, plan, caller, ctx)
            )
            body = lookup.relay(stream) if lookup is not None else stream.body()
            return SSEResponse(body, ctx.response_headers())
        response = await until_disconnect(request, pipeline.chat(req, route, plan, caller, ctx))
    except ClientDisconnectedError:
        await pipeline.bill_abandoned(req.prompt_chars(), caller, ctx)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException:
        await services.limits.release(ctx, caller)
        raise
    if lookup is None:
        return json_response(response.body, headers=ctx.response_headers())
    content = await lookup.store_response(response)
    return BytesResponse(content, headers=ctx.response_headers())


async def serve_hit(
    request: Request, entry: CacheEntry, req: ChatRequest, caller: Caller
) -> Response:
    """A stored answer, or one an identical request in flight produced: costs nothing."""
    services, ctx = services_of(request), context_of(request)
    if caller.rpm is not None:  # a hit counts as a request, but uses no tokens and no budget
        await services.limits.admit(ctx, caller, 0, 0.0)
    assert services.cache is not None
    services.cache.account_hit(entry, ctx)
    await services.limits.settle(ctx, caller)
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
