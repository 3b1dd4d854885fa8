"""Admin API (admin keys only): gateway keys and the spend report.

    POST /admin/keys                  create; the answer carries the secret, once
    GET  /admin/keys                  list (config and runtime keys; never secrets or hashes)
    GET  /admin/keys/{id}             one key, with its spend in the current budget period
    POST /admin/keys/{id}/revoke      stops working on every replica within the sync interval
    POST /admin/keys/{id}/rotate      new secret, once; {"grace_s": N} keeps the old one N s
    GET  /admin/usage                 ?day=YYYY-MM-DD, ?since=...&until=..., ?month=YYYY-MM|current
                                      (UTC days; from the spend ledger in SQL)

A missing or wrong key is a 401, a valid non-admin key a 403 (OpenAI-shaped).
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import json_response, read_body, records_unavailable, services_of
from gateway.api.schemas import (
    ERRORS,
    KeyList,
    KeyView,
    KeyWithSecret,
    KeyWithSpend,
    NewKey,
    Rotation,
    UsageReport,
    json_body,
)
from gateway.dialects import decode_object
from gateway.errors import InvalidRequestError
from gateway.keys import KeyRecord, key_attributes
from gateway.limits import ReportRangeError, report_days, summarize, usage_rows
from gateway.records import SQL_ERRORS
from gateway.services import Services

_MAX_ADMIN_BODY_BYTES = 64 * 1024
M = TypeVar("M", bound=BaseModel)


router = APIRouter(tags=["admin"], responses=ERRORS)


def _admin(request: Request) -> Services:
    services = services_of(request)
    services.keys.authenticate_admin(request.headers.get("authorization"))
    return services


async def _parse(request: Request, model: type[M]) -> M:
    return _validate(await read_body(request, _MAX_ADMIN_BODY_BYTES), model)


def _validate(raw: bytes, model: type[M]) -> M:
    try:
        return model.model_validate(decode_object(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequestError(f"{param}: {first['msg']}", param=param) from None


@router.post(
    "/admin/keys", status_code=201, response_model=KeyWithSecret, openapi_extra=json_body(NewKey)
)
async def create_key(request: Request) -> Response:
    """A runtime key; the answer carries its secret, this once."""
    services = _admin(request)
    spec = await _parse(request, NewKey)
    template = KeyRecord(id="", **key_attributes(spec))
    record, secret = await services.key_admin.create(template)
    return json_response({**record, "key": secret}, status=201)


@router.get("/admin/keys", response_model=KeyList)
async def list_keys(request: Request) -> Response:
    """Config and runtime keys; never secrets or their digests."""
    services = _admin(request)
    return json_response({"object": "list", "data": await services.key_admin.list()})


@router.get("/admin/keys/{key_id}", response_model=KeyWithSpend)
async def get_key(request: Request, key_id: str) -> Response:
    """One key, with its spend in the current budget period."""
    services = _admin(request)
    item = await services.key_admin.find(key_id)
    period, spent_usd, reserved_usd = await services.limits.spend(
        str(item["id"]), str(item["budget_period"])
    )
    spend = {"period": period, "spent_usd": spent_usd, "reserved_usd": reserved_usd}
    return json_response({**item, "spend": spend})


@router.post("/admin/keys/{key_id}/revoke", response_model=KeyView)
async def revoke_key(request: Request, key_id: str) -> Response:
    """Stops working on every replica within the sync interval."""
    services = _admin(request)
    return json_response(await services.key_admin.revoke(key_id))


@router.post(
    "/admin/keys/{key_id}/rotate", response_model=KeyWithSecret, openapi_extra=json_body(Rotation)
)
async def rotate_key(request: Request, key_id: str) -> Response:
    """A new secret, shown once; `grace_s` keeps the old one working that long."""
    services = _admin(request)
    raw = await read_body(request, _MAX_ADMIN_BODY_BYTES)
    rotation = _validate(raw, Rotation) if raw.strip() else Rotation()
    record, secret = await services.key_admin.rotate(key_id, rotation.grace_s)
    return json_response({**record, "key": secret})


@router.get("/admin/usage", response_model=UsageReport)
async def usage(
    request: Request,
    day: str | None = None,
    since: str | None = None,
    until: str | None = None,
    month: str | None = None,
) -> Response:
    """Spend per key, team, route and UTC day, from the ledger: `day=YYYY-MM-DD` (default:
    today), `since` (and `until`), or `month=YYYY-MM` (`current`: month to date)."""
    services = _admin(request)
    try:
        days = report_days(day, since, until, month=month)
    except ReportRangeError as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from None
    database = services.database
    await database.written()
    try:
        rows = usage_rows(await database.ledger.usage(days))
    except SQL_ERRORS:
        raise records_unavailable() from None
    return json_response(summarize(rows, days))
