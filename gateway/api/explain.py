"""POST /v1/route/explain: the routing plan for a chat body, without calling upstream."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.controls import controls_from_headers
from gateway.api.deps import authenticate, json_response, pipeline_of, read_body, services_of
from gateway.api.schemas import CHAT_BODY, ERRORS, RoutePlan
from gateway.dialects import parse_chat_request

router = APIRouter(tags=["routing"], responses=ERRORS)


@router.post("/v1/route/explain", response_model=RoutePlan, openapi_extra=CHAT_BODY)
async def explain(request: Request) -> Response:
    """The routing plan for a chat body (with the `x-gateway-*` controls it sends):
    the candidates in order with their scores, and why the others were left out. No
    upstream is called."""
    services, pipeline = services_of(request), pipeline_of(request)
    caller = authenticate(request)
    raw = await read_body(request, services.config.server.max_body_bytes)
    req = parse_chat_request(raw, services.request_limits)
    route = services.catalog.route_for(req.model)
    caller.check_route(route.name)
    plan = pipeline.plan_chat(req, route, controls_from_headers(request.scope["headers"]))
    return json_response({"route": route.name, **plan.to_dict()})
