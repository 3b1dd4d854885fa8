"""What every route needs from a request: services, context, caller, a bounded body."""

from __future__ import annotations

from typing import cast

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway import jsonutil
from gateway.context import RequestContext
from gateway.errors import IncompleteBodyError, PayloadTooLargeError
from gateway.keys import Caller
from gateway.pipeline import Pipeline
from gateway.services import Services


def services_of(request: Request) -> Services:
    return cast(Services, request.state.services)


def pipeline_of(request: Request) -> Pipeline:
    return cast(Pipeline, request.state.pipeline)


def context_of(request: Request) -> RequestContext:
    return cast(RequestContext, request.state.ctx)


def authenticate(request: Request) -> Caller:
    caller = services_of(request).keys.authenticate(request.headers.get("authorization"))
    ctx = context_of(request)
    ctx.key_id, ctx.key_name, ctx.team = caller.key_id, caller.name, caller.team
    return caller


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """Reads at most `limit_bytes`, chunked bodies included; 413 past that (rule 14)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(f"Request body is larger than {limit_bytes} bytes.")
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit_bytes:
                raise PayloadTooLargeError(f"Request body is larger than {limit_bytes} bytes.")
            parts.append(part)
    except ClientDisconnect:
        raise IncompleteBodyError("The client closed the connection mid-body.") from None
    return b"".join(parts)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(jsonutil.dumps(body), status, headers, media_type="application/json")
