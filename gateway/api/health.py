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
    """Whether this process should get traffic: 200 `ready` once its config is loaded,
    503 `draining` from a SIGTERM on. Redis is checked and reported; unreachable, the
    status is `degraded` but still 200: the gateway serves through a Redis outage (the
    cache and rate limits fail open, budgets per `limits.on_redis_error`), and a load
    balancer that took every replica out for it would make a degraded service none."""
    services = services_of(request)
    checks: dict[str, str] = {"config": "ok"}
    status = "ready"
    redis = services.redis
    if redis is not None:
        ok = await redis.ping()
        checks["redis"] = "ok" if ok else "unreachable"
        status = "ready" if ok else "degraded"
    if services.lifecycle.draining:
        status = "draining"
    return json_response(
        {"status": status, "checks": checks}, status=503 if status == "draining" else 200
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
