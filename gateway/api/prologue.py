"""What chat, embeddings and explain do first, once: authenticate the caller, read the
bounded body, parse it in the endpoint's dialect, find the route and check the key may
use it, and read the request's routing and cache controls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from starlette.requests import Request

from gateway.api.controls import controls_from_headers
from gateway.api.deps import authenticate, context_of, read_body, services_of
from gateway.cache import CacheControls
from gateway.config import RequestLimits, Route
from gateway.context import RequestContext
from gateway.keys import Caller
from gateway.routing import RoutingControls
from gateway.services import Services


class Addressed(Protocol):
    @property
    def model(self) -> str: ...


R = TypeVar("R", bound=Addressed)


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field by a call
class Prologue(Generic[R]):
    services: Services
    ctx: RequestContext
    caller: Caller
    req: R
    route: Route
    routing: RoutingControls
    cache: CacheControls


async def prologue(
    request: Request, parse: Callable[[bytes, RequestLimits], R], mode: str = "chat"
) -> Prologue[R]:
    services, ctx = services_of(request), context_of(request)
    caller = authenticate(request)
    raw = await read_body(request, services.config.server.max_body_bytes)
    req = parse(raw, services.request_limits)
    route = services.catalog.route_for(req.model, mode)
    ctx.route = route.name
    caller.check_route(route.name)
    routing, cache = controls_from_headers(request.scope["headers"])
    return Prologue(services, ctx, caller, req, route, routing, cache)
