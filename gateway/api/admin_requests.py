"""Admin API (admin keys only): the request log, to answer "what happened to this
request?" from the x-request-id a client saw.

    GET /admin/requests/{request_id}   every row with that id (a client may reuse one)
    GET /admin/requests                ?key=<id or name>&since=&until=&status=&limit=
                                       (since/until: Unix seconds or ISO 8601; status: a
                                       code, or its class 4 / 5; newest first)

Rows carry no prompt or answer: route, policy, deployment, each failed attempt, status,
tokens, exact cost, latency, time to first token and the cache result.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import json_response, records_unavailable, services_of
from gateway.api.schemas import ERRORS, RequestList
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.records import SQL_ERRORS, parse_moment
from gateway.services import Services

router = APIRouter(tags=["admin"], responses=ERRORS)
_MAX_ROWS = 1000


def _admin(request: Request) -> Services:
    services = services_of(request)
    services.keys.authenticate_admin(request.headers.get("authorization"))
    return services


@router.get("/admin/requests/{request_id}", response_model=RequestList)
async def get_request(request: Request, request_id: str) -> Response:
    services = _admin(request)
    await services.database.written()
    try:
        rows = await services.database.request_log.get(request_id)
    except SQL_ERRORS:
        raise records_unavailable() from None
    if not rows:
        raise NotFoundError(f"No request with id '{request_id}' in the request log.")
    return json_response({"object": "list", "data": rows})


@router.get("/admin/requests", response_model=RequestList)
async def list_requests(
    request: Request,
    key: str | None = None,
    since: str | None = None,
    until: str | None = None,
    status: int | None = Query(None, ge=1, le=599),
    limit: int = Query(100, ge=1, le=_MAX_ROWS),
) -> Response:
    services = _admin(request)
    since_s, until_s = parse_time(since, "since"), parse_time(until, "until")
    await services.database.written()
    try:
        rows = await services.database.request_log.search(key, since_s, until_s, status, limit)
    except SQL_ERRORS:
        raise records_unavailable() from None
    return json_response({"object": "list", "data": rows})


def parse_time(text: str | None, param: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValueError:
        raise InvalidRequestError(
            f"{param} must be Unix seconds or an ISO 8601 time like 2025-01-31T12:00:00Z.",
            param=param,
        ) from None
