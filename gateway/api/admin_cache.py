"""POST /admin/cache/purge (admin keys only): drop a tenant's cached responses, or all.

Body `{"tenant": "team:<team>"}` for a team's keys, `{"tenant": "key:<key id>"}` for a
key without a team (the id `GET /admin/keys` lists), or `{}` / no body for every
entry. Answers `{"purged": <entries deleted>, "tenant": ...}`; 503 when the cache
backend is unreachable. A missing or wrong key is a 401, a non-admin key a 403.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import json_response, read_body, services_of
from gateway.api.schemas import ERRORS, Purge, Purged, json_body
from gateway.dialects import decode_object
from gateway.errors import InvalidRequestError

_MAX_BODY_BYTES = 4096
_TENANT_KINDS = ("team:", "key:")


router = APIRouter(tags=["admin"], responses=ERRORS)


@router.post("/admin/cache/purge", response_model=Purged, openapi_extra=json_body(Purge))
async def purge_cache(request: Request) -> Response:
    """Drops a tenant's cached responses, or every entry."""
    services = services_of(request)
    services.keys.authenticate_admin(request.headers.get("authorization"))
    tenant = parse_tenant(await read_body(request, _MAX_BODY_BYTES))
    purged = 0
    if services.cache is not None:
        purged = await services.cache.purge(tenant)
    return json_response({"purged": purged, "tenant": tenant})


def parse_tenant(raw: bytes) -> str | None:
    body = decode_object(raw) if raw.strip() else {}
    unknown = sorted(set(body) - {"tenant"})
    if unknown:
        raise InvalidRequestError(f"Unknown field: {unknown[0]}.", param=unknown[0])
    tenant = body.get("tenant")
    if tenant is None:
        return None
    if not isinstance(tenant, str) or not tenant.startswith(_TENANT_KINDS):
        raise InvalidRequestError(
            "'tenant' must be 'team:<team>' or 'key:<key id>'.", param="tenant"
        )
    if tenant in _TENANT_KINDS:
        raise InvalidRequestError("'tenant' names no team or key.", param="tenant")
    return tenant
