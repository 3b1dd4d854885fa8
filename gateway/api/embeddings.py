"""POST /v1/embeddings."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import (
    admit,
    json_response,
    pipeline_of,
)
from gateway.api.prologue import prologue
from gateway.config import estimate_tokens
from gateway.dialects import parse_embedding_request
from gateway.limits import has_limits
from gateway.routing import route_request
from routers import Plan


async def create_embeddings(request: Request) -> Response:
    first = await prologue(request, parse_embedding_request, mode="embedding")
    services, ctx, caller, req, route = (
        first.services,
        first.ctx,
        first.caller,
        first.req,
        first.route,
    )
    pipeline, routing = pipeline_of(request), first.routing
    chars = sum(len(str(i)) for i in req.inputs)
    needs = frozenset({"embeddings"})
    plan = services.planner.plan(route, route_request(chars, None, needs, routing), routing.policy)
    ctx.policy = plan.policy
    reservation = None  # a caller without limits: nothing to check or reserve
    if has_limits(caller):
        reservation = await admit(services, ctx, caller, *estimate(plan, chars))
    try:
        response = await pipeline.embeddings(req, route, plan, caller, reservation, ctx)
    except BaseException:
        await services.limits.release(reservation)
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
