"""POST /v1/route/explain: the routing plan for a chat body (or another dialect's),
without calling upstream."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import json_response, pipeline_of
from gateway.api.prologue import prologue
from gateway.api.schemas import CHAT_BODY, ERRORS, RoutePlan
from gateway.dialects import PARSERS
from gateway.errors import InvalidRequestError

router = APIRouter(tags=["routing"], responses=ERRORS)


@router.post("/v1/route/explain", response_model=RoutePlan, openapi_extra=CHAT_BODY)
async def explain(
    request: Request,
    dialect: str = Query("chat", description="the body's dialect: " + ", ".join(PARSERS)),
) -> Response:
    """The routing plan for a chat body, or another dialect's (`?dialect=completions`,
    `messages`, `responses`), with the `x-gateway-*` controls it sends: the candidates
    in order with their scores, and why the others were left out. No upstream is
    called."""
    parse = PARSERS.get(dialect)
    if parse is None:
        raise InvalidRequestError(
            f"Unknown dialect {dialect!r}: one of {', '.join(PARSERS)}.", param="dialect"
        )
    first = await prologue(request, parse)
    plan = pipeline_of(request).plan_chat(first.req, first.route, first.routing)
    return json_response({"route": first.route.name, **plan.to_dict()})
