"""The endpoints on every request's path, answered without Starlette's layers.

Starlette sends a request through its error and exception middleware, the router (a
regex per route), the route's own exception wrapper, and every `send` through a
closure per layer: a tenth of the gateway's CPU per request. `RequestContextMiddleware`
calls `answer` for a POST to one of these paths instead, with the same error
handlers; every other request (other methods too, for their 405) goes to Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.error_handlers import respond_to

Endpoint = Callable[[Request], Awaitable[Response]]


async def answer(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> Response:
    """The endpoint's response, or the OpenAI-shaped error its exception maps to."""
    request = Request(scope, receive, send)
    try:
        return await endpoint(request)
    except Exception as exc:
        return await respond_to(request, exc)
