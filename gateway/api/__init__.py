"""HTTP routes. Each module exposes `routes: list[Route]`."""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.api import admin_cache, admin_keys, chat, embeddings, explain, health, models


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
