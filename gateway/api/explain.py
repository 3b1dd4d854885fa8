"""POST /v1/route/explain: the routing plan for a chat body, without calling upstream."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import json_response, pipeline_of
from gateway.api.prologue import prologue
from gateway.api.schemas import CHAT_BODY, ERRORS, RoutePlan
from gateway.dialects import parse_chat_request

router = APIRouter(tags=["routing"], responses=ERRORS)


@router.post("/v1/route/explain", response_model=RoutePlan, openapi_extra=CHAT_BODY)
async def explain(request: Request) -> Response:
    """The routing plan for a chat body (with the `x-gateway-*` controls it sends):
    the candidates in order with their scores, and why the others were left out. No
    upstream is called."""
    first = await prologue(request, parse_chat_request)
    plan = pipeline_of(request).plan_chat(first.req, first.route, first.routing)
    return json_response({"route": first.route.name, **plan.to_dict()})
