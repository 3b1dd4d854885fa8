"""The endpoints on every request's path, answered without Starlette's layers.

Starlette sends a request through its error and exception middleware, the router (a
regex per route), the route's own exception wrapper, and every `send` through a
closure per layer: a tenth of the gateway's CPU per request. `RequestContextMiddleware`
calls the endpoint directly for a POST to one of these paths instead, with the same
error handlers (`respond_to`); every other request (other methods too, for their 405)
goes to Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

Endpoint = Callable[[Request], Awaitable[Response]]
