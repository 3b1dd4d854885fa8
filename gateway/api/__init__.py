"""HTTP routes. Each module exposes `routes: list[Route]`."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from gateway.api import admin_cache, admin_keys, chat, embeddings, explain, health, models
from gateway.api.hot import Endpoint


def all_routes() -> list[BaseRoute]:
    return [
        *chat.routes,
        *embeddings.routes,
        *models.routes,
        *health.routes,
        *explain.routes,
        *admin_keys.routes,
        *admin_cache.routes,
    ]


def hot_paths() -> dict[str, Endpoint]:
    """POST endpoints answered by `RequestContextMiddleware` through gateway.api.hot
    (Starlette's router keeps them too, for their 405s)."""
    hot = [*chat.routes, *embeddings.routes]
    return {r.path: r.endpoint for r in hot if isinstance(r, Route)}
