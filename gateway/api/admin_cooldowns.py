"""Admin API (admin keys only): the deployments cooling down, and ending their cooldowns.

    GET    /admin/cooldowns                  cooling down or half-open, as this process sees it
    DELETE /admin/cooldowns/{deployment_id}  ends that deployment's cooldown (404 if unknown)
    DELETE /admin/cooldowns                  ends every cooldown

A clear closes the breaker (no cooldown, failure streak 0, not half-open). With Redis it
is written to the shared state first and reaches every worker and replica within
`routing.stats_sync_interval_s` (503 when Redis is unreachable: nothing was cleared);
without Redis it reaches only the process that answered. The answer lists what was
cooling down or half-open among the deployments cleared. A missing or wrong key is a
401, a valid non-admin key a 403 (OpenAI-shaped).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import json_response, services_of
from gateway.api.schemas import ERRORS, CooldownList
from gateway.errors import LimitsUnavailableError, NotFoundError
from gateway.redis import RedisUnavailableError
from gateway.routing import clear_shared, cooldown_entry, local_cooldowns
from gateway.services import Services

router = APIRouter(tags=["admin"], responses=ERRORS)


def _admin(request: Request) -> Services:
    services = services_of(request)
    services.keys.authenticate_admin(request.headers.get("authorization"))
    return services


@router.get("/admin/cooldowns", response_model=CooldownList)
async def list_cooldowns(request: Request) -> Response:
    """Deployments cooling down or half-open: this process's own cooldowns and those
    synced from the other workers and replicas."""
    services = _admin(request)
    entries = local_cooldowns(services.stats, services.catalog.deployments, time.time())
    return json_response({"object": "list", "data": entries})


@router.delete("/admin/cooldowns", response_model=CooldownList)
async def clear_all_cooldowns(request: Request) -> Response:
    """Ends every deployment's cooldown."""
    services = _admin(request)
    cleared = await _clear(services, sorted(services.catalog.deployments))
    return json_response({"object": "list", "data": cleared})


@router.delete("/admin/cooldowns/{deployment_id:path}", response_model=CooldownList)
async def clear_cooldown(request: Request, deployment_id: str) -> Response:
    """Ends one deployment's cooldown (its id as `GET /admin/cooldowns` lists it)."""
    services = _admin(request)
    if deployment_id not in services.catalog.deployments:
        raise NotFoundError(f"No deployment with id '{deployment_id}'.")
    cleared = await _clear(services, [deployment_id])
    return json_response({"object": "list", "data": cleared})


async def _clear(services: Services, deployment_ids: list[str]) -> list[dict[str, Any]]:
    """Shared state first (so that a Redis failure leaves nothing half done), then this
    process's: with the same time, which `stats_sync` relies on."""
    at = time.time()
    deployments = services.catalog.deployments
    wanted = set(deployment_ids)
    was = {
        e["deployment"]: e
        for e in local_cooldowns(services.stats, deployments, at)
        if e["deployment"] in wanted
    }
    if services.redis is not None:
        try:
            removed = await services.redis.run_or_raise(
                "stats", lambda client: clear_shared(client, deployment_ids, at)
            )
        except RedisUnavailableError:
            raise LimitsUnavailableError(
                "The shared cooldown state (Redis) is unreachable; nothing was cleared. "
                "Try again shortly.",
                retry_after_s=2,
            ) from None
        for d, (until, reason) in removed.items():  # not synced here yet
            if d not in was and d in deployments and until > at:
                was[d] = cooldown_entry(d, deployments[d].provider, until, at, 0, reason)
    for d in deployment_ids:
        services.stats.clear(d, at)
    for d in was:
        services.metrics.record_cooldown(d, 0.0)
    return [was[d] for d in sorted(was)]
