"""What every route needs from a request: services, context, caller, a bounded body."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from gateway import jsonutil
from gateway.api.http_protocol import Header
from gateway.context import RequestContext
from gateway.errors import IncompleteBodyError, PayloadTooLargeError
from gateway.keys import Caller
from gateway.pipeline import Pipeline
from gateway.services import Services


# From the scope's state dict itself: `request.state` wraps it in an object whose
# attribute lookups are Python calls, several per request on the hot path.
def services_of(request: Request) -> Services:
    services: Services = request.scope["state"]["services"]
    return services


def pipeline_of(request: Request) -> Pipeline:
    pipeline: Pipeline = request.scope["state"]["pipeline"]
    return pipeline


def context_of(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["state"]["ctx"]
    return ctx


def header(scope: Scope, name: bytes) -> str | None:
    """A request header (the first) by its lower-case name, read from the scope:
    `request.headers` builds a Headers object whose `get` goes through the Mapping ABC
    per call."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in raw:
        if key == name:
            return value.decode("latin-1")
    return None


def authenticate(request: Request) -> Caller:
    caller = services_of(request).keys.authenticate(header(request.scope, b"authorization"))
    ctx = context_of(request)
    ctx.key_id, ctx.key_name, ctx.team = caller.key_id, caller.name, caller.team
    return caller


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """Reads at most `limit_bytes`, chunked bodies included; 413 past that (rule 14)."""
    declared = header(request.scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(f"Request body is larger than {limit_bytes} bytes.")
    # From `receive` itself: Starlette's `request.stream()` is an async generator, a
    # few percent of a request's CPU for the one or two messages a body takes.
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            raise IncompleteBodyError("The client closed the connection mid-body.")
        part = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(part)
        if size > limit_bytes:
            raise PayloadTooLargeError(f"Request body is larger than {limit_bytes} bytes.")
        parts.append(part)
    return b"".join(parts)  # one part: the same bytes object, no copy


def json_response(body: object, status: int = 200, headers: list[Header] | None = None) -> Response:
    return BytesResponse(jsonutil.dumps(body), status, headers)


class BytesResponse(Response):
    """A finished body with raw, lower-case headers: Starlette's Response without its
    header normalisation (a few percent of a request's CPU). JSON unless told."""

    body: bytes

    def __init__(
        self,
        content: bytes,
        status_code: int = 200,
        headers: list[Header] | None = None,
        content_type: bytes = b"application/json",
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.body = content
        self.raw_headers = [
            (b"content-length", b"%d" % len(content)),
            (b"content-type", content_type),
        ]
        if headers:
            self.raw_headers += headers
