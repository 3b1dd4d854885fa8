"""The HTTP face: the routes, the middleware, the HTTP protocol, the metrics listener. The
only wing that knows ASGI, Starlette, FastAPI and uvicorn.

Chat and embeddings are answered by `RequestContextMiddleware` directly (gateway.api.hot:
no framework layer on the hot path); everything else, the management API, is a FastAPI
app with pydantic models, its OpenAPI description at `/openapi.json` and interactive docs
at `/docs` (`server.docs`).

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.api import (
    admin_cache,
    admin_cooldowns,
    admin_keys,
    admin_requests,
    chat,
    completions,
    embeddings,
    explain,
    health,
    messages,
    models,
    responses,
)
from gateway.api.error_handlers import EXCEPTION_HANDLERS
from gateway.api.hot import Endpoint
from gateway.api.http_protocol import protocol_setting
from gateway.api.metrics_listener import multiprocess_dir, start_in_process, start_supervisor
from gateway.api.middleware import RequestContextMiddleware
from gateway.config import ServerConfig

Lifespan = Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]
HOT_ROUTES: list[BaseRoute] = [
    *chat.routes,
    *completions.routes,
    *messages.routes,
    *responses.routes,
    *embeddings.routes,
]


def asgi_app(server: ServerConfig, lifespan: Lifespan) -> RequestContextMiddleware:
    """The whole HTTP application: the hot paths in the middleware, the rest in FastAPI."""
    app = FastAPI(
        title="model-gateway",
        version=__version__,
        summary="OpenAI-compatible model routing gateway: management API",
        description=(
            "Chat (`POST /v1/chat/completions`) and embeddings (`POST /v1/embeddings`) "
            "take OpenAI's request bodies and are served on a direct path; see OpenAI's API "
            'reference for them. Every error is OpenAI-shaped: `{"error": {...}}`.'
        ),
        lifespan=lifespan,
        docs_url="/docs" if server.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if server.docs else None,
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )
    for router in (models.router, explain.router, health.router):
        app.include_router(router)
    app.include_router(admin_keys.router)
    app.include_router(admin_requests.router)
    app.include_router(admin_cache.router)
    app.include_router(admin_cooldowns.router)
    app.include_router(responses.router)
    # Starlette's router keeps the hot paths too, for their 405s (never reached for POST).
    app.router.routes.extend(HOT_ROUTES)
    return RequestContextMiddleware(
        app, max_concurrent_requests=server.max_concurrent_requests, hot_paths=hot_paths()
    )


def hot_paths() -> dict[str, Endpoint]:
    """POST endpoints answered by `RequestContextMiddleware` through gateway.api.hot."""
    return {r.path: r.endpoint for r in HOT_ROUTES if isinstance(r, Route)}


__all__ = [
    "Lifespan",
    "RequestContextMiddleware",
    "asgi_app",
    "hot_paths",
    "multiprocess_dir",
    "protocol_setting",
    "start_in_process",
    "start_supervisor",
]
