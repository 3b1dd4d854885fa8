"""POST /v1/route/explain: the routing plan for a chat body, without calling upstream."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import authenticate, json_response, pipeline_of, read_body, services_of
from gateway.planning import controls_from_headers
from gateway.validation import parse_chat_request


async def explain(request: Request) -> Response:
    services, pipeline = services_of(request), pipeline_of(request)
    caller = authenticate(request)
    raw = await read_body(request, services.config.server.max_body_bytes)
    req = parse_chat_request(raw, services.request_limits)
    route = services.catalog.route_for(req.model)
    caller.check_route(route.name)
    plan = pipeline.plan_chat(req, route, controls_from_headers(request.scope["headers"]))
    return json_response({"route": route.name, **plan.to_dict()})


routes = [Route("/v1/route/explain", explain, methods=["POST"])]
