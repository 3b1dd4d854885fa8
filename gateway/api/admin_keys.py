"""Admin API (admin keys only): gateway keys and the spend report.

    POST /admin/keys                  create; the answer carries the secret, once
    GET  /admin/keys                  list (config and runtime keys; never secrets or hashes)
    GET  /admin/keys/{id}             one key, with its spend in the current budget period
    POST /admin/keys/{id}/revoke      stops working on every replica within the sync interval
    POST /admin/keys/{id}/rotate      new secret, once; {"grace_s": N} keeps the old one N s
    GET  /admin/usage                 ?day=YYYY-MM-DD or ?since=...&until=... (UTC days)

A missing or wrong key is a 401, a valid non-admin key a 403 (OpenAI-shaped).
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import json_response, read_body, services_of
from gateway.errors import InvalidRequestError
from gateway.key_store_redis import KeyRecord
from gateway.services import Services
from gateway.usage_report import ReportRangeError, report_days, summarize
from gateway.validation import decode_object

_MAX_ADMIN_BODY_BYTES = 64 * 1024
M = TypeVar("M", bound=BaseModel)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    team: str | None = Field(None, max_length=128)
    routes: list[str] | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    budget_period: Literal["day", "month", "total"] = "month"
    labels: dict[str, str] = Field(default_factory=dict)


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_s: float = Field(0.0, ge=0, le=30 * 86_400)


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


async def create_key(request: Request) -> Response:
    services = _admin(request)
    spec = await _parse(request, NewKey)
    template = KeyRecord(
        id="",
        name=spec.name,
        team=spec.team,
        routes=tuple(spec.routes) if spec.routes is not None else None,
        rpm=spec.rpm,
        tpm=spec.tpm,
        budget_usd=spec.budget_usd,
        budget_period=spec.budget_period,
        labels=spec.labels,
    )
    record, secret = await services.key_admin.create(template)
    return json_response({**record, "key": secret}, status=201)


async def list_keys(request: Request) -> Response:
    services = _admin(request)
    return json_response({"object": "list", "data": await services.key_admin.list()})


async def get_key(request: Request) -> Response:
    services = _admin(request)
    item = await services.key_admin.find(request.path_params["key_id"])
    period, spent_usd, reserved_usd = await services.limits.spend(
        str(item["id"]), str(item["budget_period"])
    )
    spend = {"period": period, "spent_usd": spent_usd, "reserved_usd": reserved_usd}
    return json_response({**item, "spend": spend})


async def revoke_key(request: Request) -> Response:
    services = _admin(request)
    return json_response(await services.key_admin.revoke(request.path_params["key_id"]))


async def rotate_key(request: Request) -> Response:
    services = _admin(request)
    raw = await read_body(request, _MAX_ADMIN_BODY_BYTES)
    rotation = _validate(raw, Rotation) if raw.strip() else Rotation()
    record, secret = await services.key_admin.rotate(
        request.path_params["key_id"], rotation.grace_s
    )
    return json_response({**record, "key": secret})


async def usage(request: Request) -> Response:
    services = _admin(request)
    query = request.query_params
    try:
        days = report_days(query.get("day"), query.get("since"), query.get("until"))
    except ReportRangeError as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from None
    rows = await services.limits.usage(days)
    return json_response(summarize(rows, days))


routes = [
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key_id}", get_key, methods=["GET"]),
    Route("/admin/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/keys/{key_id}/rotate", rotate_key, methods=["POST"]),
    Route("/admin/usage", usage, methods=["GET"]),
]
