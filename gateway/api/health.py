"""Liveness, readiness and the metrics endpoint."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.api.deps import json_response, services_of
from gateway.errors import AuthenticationError
from gateway.keys import bearer_token


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
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


async def metrics(request: Request) -> Response:
    services = services_of(request)
    token = services.config.metrics.token
    if token:
        given = bearer_token(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise AuthenticationError("The metrics endpoint needs its bearer token.")
    return Response(
        services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
