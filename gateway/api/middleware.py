"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and contextvars).

Gives every request a `RequestContext` and an `x-request-id` (the client's if it is
sane, else a new one), then writes one access-log line and the request metrics when
the response has been fully sent, streams included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import jsonutil
from gateway.api.deps import BytesResponse, header
from gateway.api.error_handlers import respond_to
from gateway.api.hot import Endpoint
from gateway.api.http_protocol import Header, write_whole_response
from gateway.context import RequestContext
from gateway.dialects import MESSAGES
from gateway.errors import GatewayOverloadedError
from gateway.ids import new_id

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/route/explain": "explain",
}


def endpoint_label(path: str) -> str:
    return _ENDPOINTS.get(path, "other")


class RequestContextMiddleware:
    """The outermost layer. POST requests to `hot_paths` (chat, embeddings) go straight
    to their endpoint (gateway.api.hot); everything else goes on to `app` (Starlette)."""

    def __init__(
        self,
        app: ASGIApp,
        max_concurrent_requests: int = 4096,
        hot_paths: Mapping[str, Endpoint] | None = None,
    ) -> None:
        self.app = app
        self._max_in_flight = max_concurrent_requests
        self._in_flight = 0
        self._hot = dict(hot_paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._in_flight >= self._max_in_flight:
            services = scope.get("state", {}).get("services")
            if services is not None:
                services.metrics.record_rejection("overloaded")
            await _overloaded(send, scope["path"])
            return
        ctx = RequestContext(_request_id(scope), endpoint_label(scope["path"]))
        state = scope.setdefault("state", {})
        state["ctx"] = ctx
        header = (b"x-request-id", ctx.request_id.encode())
        services = state.get("services")
        in_flight: dict[str, int] = services.metrics.in_flight_now if services is not None else {}
        counted = ctx.endpoint in in_flight
        if counted:
            in_flight[ctx.endpoint] += 1
        self._in_flight += 1
        try:
            endpoint = self._hot.get(scope["path"]) if scope.get("method") == "POST" else None
            if endpoint is not None:
                await _serve_hot(endpoint, scope, receive, send, ctx, header)
            else:
                await self._serve_app(scope, receive, send, ctx, header)
        finally:
            self._in_flight -= 1
            if counted:
                in_flight[ctx.endpoint] -= 1

    async def _serve_app(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext, header: Header
    ) -> None:
        state = scope["state"]
        done = started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal done, started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0] != b"x-request-id"]
                message["headers"] = [*headers, header]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
                _finished(state, ctx)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not started:  # the outermost handler answers 500, past this wrapper
                ctx.status, ctx.error_code = 500, "internal_error"
            raise
        finally:
            if not done:  # the client left mid-response: still one log line and metrics
                _finished(state, ctx)


async def _serve_hot(
    endpoint: Endpoint,
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: RequestContext,
    header: Header,
) -> None:
    # No send wrapper: the response object carries the status and the request id,
    # and when it returns, its body (a stream's too) has been sent or abandoned.
    request = Request(scope, receive, send)
    try:
        try:
            response = await endpoint(request)
        except Exception as exc:  # the OpenAI-shaped error Starlette's handlers would give
            response = await respond_to(request, exc)
        ctx.status = response.status_code
        if header not in response.raw_headers:
            response.raw_headers.append(header)
        if type(response) is BytesResponse and write_whole_response(
            send, response.status_code, response.raw_headers, response.body
        ):
            return
        await response(scope, receive, send)
    finally:
        _finished(scope["state"], ctx)


async def _overloaded(send: Send, path: str) -> None:
    """Bounded concurrency (rule 14): a retryable 503 instead of queueing, in the shape of
    the path's dialect (Anthropic's `overloaded_error` on /v1/messages, else OpenAI's)."""
    error = GatewayOverloadedError("The gateway is at capacity.")
    shaped = MESSAGES.error_body(error) if path.startswith("/v1/messages") else None
    body = jsonutil.dumps(shaped if shaped is not None else error.to_openai_body())
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    candidate = header(scope, b"x-request-id")
    if candidate is not None and _SANE_ID.match(candidate):
        return candidate
    return new_id()


def _finished(state: dict[str, Any], ctx: RequestContext) -> None:
    services = state.get("services")
    if services is None:
        return
    if ctx.key_slot is not None:
        services.keys.concurrency.release(ctx.key_slot)
    if ctx.endpoint == "other":
        return
    services.metrics.record_request(ctx)
    if services.access_log is not None:
        services.access_log.write(access_fields(ctx))
    records = services.database.records
    if records is not None:
        records.add(ctx)


def access_fields(ctx: RequestContext) -> dict[str, object]:
    usage = ctx.usage
    return {
        "event": "access",
        "request_id": ctx.request_id,
        "endpoint": ctx.endpoint,
        "route": ctx.route,
        "policy": ctx.policy,
        "deployment": ctx.deployment_id,
        "provider": ctx.provider,
        "status": ctx.status,
        "error_code": ctx.error_code,
        "latency_ms": round(ctx.elapsed_s() * 1000, 2),
        "ttft_ms": round(ctx.ttft_s * 1000, 2) if ctx.ttft_s is not None else None,
        "attempts": ctx.attempts,
        "failed_attempts": ctx.failed_attempts,
        "stream": ctx.stream,
        "stream_outcome": ctx.stream_outcome,
        "input_tokens": usage.prompt_tokens if usage else None,
        "output_tokens": usage.completion_tokens if usage else None,
        "usage_estimated": usage.estimated if usage else None,
        "cost_usd": ctx.cost_usd,
        "cache": ctx.cache,
        "key": ctx.key_name,
        "team": ctx.team,
    }
