"""POST /v1/chat/completions: authenticate, parse, plan, then JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.api.deps import (
    authenticate,
    context_of,
    json_response,
    pipeline_of,
    read_body,
    services_of,
)
from gateway.api.disconnect import ClientDisconnectedError, until_disconnect
from gateway.planning import controls_from_headers
from gateway.pricing import estimate_tokens
from gateway.types import ChatRequest
from gateway.validation import parse_chat_request
from routers import Plan

CLIENT_CLOSED_REQUEST = 499  # nginx's code: for the access log, the client is gone
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def chat_completions(request: Request) -> Response:
    services, pipeline, ctx = services_of(request), pipeline_of(request), context_of(request)
    caller = authenticate(request)
    raw = await read_body(request, services.config.server.max_body_bytes)
    req = parse_chat_request(raw, services.request_limits)
    route = services.catalog.route_for(req.model)
    ctx.route, ctx.stream = route.name, req.stream
    caller.check_route(route.name)
    plan = pipeline.plan_chat(req, route, controls_from_headers(request.headers))
    ctx.policy = plan.policy
    await services.limits.admit(ctx, caller, *estimate(plan, req))
    try:
        if req.stream:
            stream = await until_disconnect(
                request, pipeline.chat_stream(req, route, plan, caller, ctx)
            )
            headers = {**SSE_HEADERS, **ctx.response_headers()}
            return StreamingResponse(stream.body(), media_type="text/event-stream", headers=headers)
        response = await until_disconnect(request, pipeline.chat(req, route, plan, caller, ctx))
    except ClientDisconnectedError:
        await pipeline.bill_abandoned(req.prompt_chars(), caller, ctx)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException:
        await services.limits.release(ctx, caller)
        raise
    return json_response(response.body, headers=ctx.response_headers())


def estimate(plan: Plan, req: ChatRequest) -> tuple[int, float]:
    """(tokens, USD) this request is expected to cost on the first planned deployment."""
    if not plan.ordered:
        return 0, 0.0
    breakdown = plan.ordered[0].breakdown
    tokens = estimate_tokens(req.prompt_chars()) + int(breakdown.get("expected_output_tokens", 0))
    return tokens, float(breakdown.get("expected_cost_usd", 0.0))


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
