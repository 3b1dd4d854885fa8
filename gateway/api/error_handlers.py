"""Every error a client sees, as an OpenAI-shaped body (`{"error": {...}}`)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway import jsonutil
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError

log = logging.getLogger("gateway")
Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]


def error_response(error: GatewayError, body: dict[str, object] | None = None) -> Response:
    """`error` with its status and headers; `body`: another dialect's shape of it
    (default OpenAI's)."""
    return Response(
        jsonutil.dumps(error.to_openai_body() if body is None else body),
        error.status,
        error.headers(),
        media_type="application/json",
    )


async def gateway_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    ctx = getattr(request.state, "ctx", None)
    if ctx is not None:
        ctx.error_code = exc.error_code
    return error_response(exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFoundError(f"Unknown path: {request.url.path}"))
    error = InvalidRequestError(exc.detail or "Bad request.")
    response = error_response(error)
    response.status_code = exc.status_code
    return response


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's validation errors, OpenAI-shaped (a 400 naming the param), never its
    422 shape."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    message = f"{param}: {first.get('msg', 'invalid')}" if param else "Invalid request."
    return await gateway_error_handler(request, InvalidRequestError(message, param=param))


def internal_error(exc: BaseException) -> GatewayError:
    """A 500 for an error that is not the gateway's own, logged by type and place only:
    tracebacks may hold request data or secrets."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{frame.filename}:{frame.lineno}" if frame else "?"
    log.error("unhandled error %s at %s", type(exc).__name__, where)
    return GatewayError("The gateway hit an internal error.")


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    return error_response(internal_error(exc))


EXCEPTION_HANDLERS: dict[int | type[Exception], Handler] = {
    GatewayError: gateway_error_handler,
    HTTPException: http_error_handler,
    RequestValidationError: validation_error_handler,
    Exception: unexpected_error_handler,
}


async def respond_to(request: Request, exc: Exception) -> Response:
    """The answer the registered handler gives, found by the exception's class (MRO)."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return await handler(request, exc)
    raise exc  # BaseException subclasses outside Exception never get here
