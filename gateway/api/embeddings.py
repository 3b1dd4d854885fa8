"""POST /v1/embeddings."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.controls import controls_from_headers
from gateway.api.deps import (
    authenticate,
    context_of,
    json_response,
    pipeline_of,
    read_body,
    services_of,
)
from gateway.config import estimate_tokens
from gateway.dialects import parse_embedding_request
from gateway.limits import has_limits
from gateway.routing import route_request
from routers import Plan


async def create_embeddings(request: Request) -> Response:
    services, pipeline, ctx = services_of(request), pipeline_of(request), context_of(request)
    caller = authenticate(request)
    raw = await read_body(request, services.config.server.max_body_bytes)
    req = parse_embedding_request(raw, services.request_limits)
    route = services.catalog.route_for(req.model, mode="embedding")
    ctx.route = route.name
    caller.check_route(route.name)
    controls = controls_from_headers(request.scope["headers"])
    chars = sum(len(str(i)) for i in req.inputs)
    needs = frozenset({"embeddings"})
    plan = services.planner.plan(
        route, route_request(chars, None, needs, controls), controls.policy
    )
    ctx.policy = plan.policy
    if has_limits(caller):  # else nothing to check or reserve
        await services.limits.admit(ctx, caller, *estimate(plan, chars))
    try:
        response = await pipeline.embeddings(req, route, plan, caller, ctx)
    except BaseException:
        await services.limits.release(ctx, caller)
        raise
    return json_response(response.body, headers=ctx.response_headers())


def estimate(plan: Plan, input_chars: int) -> tuple[int, float]:
    """(tokens, USD) on the first planned deployment; embeddings produce no output tokens."""
    if not plan.ordered:
        return 0, 0.0
    candidate = plan.ordered[0].candidate
    tokens = estimate_tokens(input_chars)
    return tokens, tokens * candidate.input_price_per_mtok_usd / 1e6


routes = [Route("/v1/embeddings", create_embeddings, methods=["POST"])]
