"""Liveness, readiness and the metrics endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway.api.deps import json_response, services_of
from gateway.api.metrics_listener import CONTENT_TYPE, scrape, token_ok
from gateway.api.schemas import Readiness
from gateway.errors import AuthenticationError, NotFoundError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_class=PlainTextResponse)
async def healthz(request: Request) -> Response:
    """Process alive: `ok`."""
    return PlainTextResponse("ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> Response:
    """Config loaded; Redis reachable when configured (503 otherwise)."""
    services = services_of(request)
    checks: dict[str, str] = {"config": "ok"}
    ready = True
    redis = services.redis
    if redis is not None:
        ok = await redis.ping()
        checks["redis"] = "ok" if ok else "unreachable"
        ready = ok
    return json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    services = services_of(request)
    config = services.config.metrics
    if not config.enabled or config.port is not None:  # off, or on its own listener
        raise NotFoundError(f"Unknown path: {request.url.path}")
    if not token_ok(config.token, request.headers.get("authorization")):
        raise AuthenticationError("The metrics endpoint needs its bearer token.")
    return Response(scrape(services), media_type=CONTENT_TYPE)
