"""OpenAI's Responses API, served by chat deployments of any provider (the mapping is
gateway.dialects.openai_responses), and its stored responses:

    POST   /v1/responses                      create (JSON or a stream of events)
    GET    /v1/responses/{id}                 a stored Response
    GET    /v1/responses/{id}/input_items     the items it was made from: the earlier
                                              turns, then its own input (?order=asc|desc,
                                              default desc; limit=1..100, default 20;
                                              after=<item id>)
    DELETE /v1/responses/{id}

POST runs chat's flow (`serve`: auth, cache, limits, routing, fallback, accounting)
with the request's own dialect, after two steps of its own: the caller's tenant and the
body are read first, so that a `previous_response_id` (this tenant's only) is loaded
from the store before the body is parsed (the earlier turns go in front of the new
input). With `store` (the default) the Response is written before its answer goes out
(a stream: before its `response.completed` event), so the next request finds it on
any replica. The GET and DELETE routes take a gateway key (not the admin key) and see
only the caller's tenant's responses; with SQL unreachable they answer the retryable
503 `database_unavailable`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Literal

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute
from starlette.types import Message, Receive

from gateway.api.chat import serve
from gateway.api.deps import (
    authenticate,
    authorization,
    json_response,
    read_body,
    records_unavailable,
    services_of,
)
from gateway.api.sse_response import SSEResponse
from gateway.dialects import RESPONSES, ResponsesCall
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.records import SQL_ERRORS, ResponseStore, StoredResponse
from gateway.services import Services
from gateway.types import JSONObject


class PreviousResponseNotFoundError(InvalidRequestError):
    code = "previous_response_not_found"


async def create_response(request: Request) -> Response:
    services = services_of(request)
    tenant = _tenant(request, services)
    raw = await read_body(request, services.config.server.max_body_bytes)
    call = RESPONSES.begin(raw, services.request_limits)
    if call.previous_response_id is not None:
        call.continues(await _earlier_turns(services, call.previous_response_id, tenant))
    response = await serve(_BodyAgain(request, raw), call)
    if not call.store or response.status_code != 200:
        return response
    store = services.database.responses
    if isinstance(response, SSEResponse):
        response.body_iterator = _stored_before_the_end(response.body_iterator, call, store, tenant)
    elif call.final is not None:
        await store.save(_stored(call, tenant))
    return response


def _tenant(request: Request, services: Services) -> str:
    """The caller's tenant, without taking a concurrency slot: `serve` authenticates
    the request for good (ctx, slot) when it starts."""
    return services.keys.authenticate(authorization(request.scope)).tenant


class _BodyAgain(Request):
    """The request as `serve` reads it: the body read here once more, then the
    connection's own `receive` (which its disconnect watch hooks into)."""

    def __init__(self, request: Request, body: bytes) -> None:
        super().__init__(request.scope, request.receive, request._send)
        self._replay: bytes | None = body

    @property
    def receive(self) -> Receive:
        return self._receive if self._replay is None else self._again

    async def _again(self) -> Message:
        body, self._replay = self._replay or b"", None
        return {"type": "http.request", "body": body, "more_body": False}


async def _earlier_turns(services: Services, previous: str, tenant: str) -> list[JSONObject]:
    try:
        chain = await services.database.responses.conversation(previous, tenant)
    except SQL_ERRORS:
        raise records_unavailable() from None
    if chain is None:
        raise PreviousResponseNotFoundError(
            f"Previous response with id '{previous}' not found.", param="previous_response_id"
        )
    return conversation_items(chain)


def conversation_items(chain: list[StoredResponse]) -> list[JSONObject]:
    """Every turn's input items and output, oldest first."""
    items: list[JSONObject] = []
    for stored in chain:
        items += stored.input_items
        items += stored.response.get("output") or []
    return items


def _stored(call: ResponsesCall, tenant: str) -> StoredResponse:
    assert call.final is not None
    return StoredResponse(
        call.id, tenant, time.time(), call.previous_response_id, call.items, call.final
    )


async def _stored_before_the_end(
    body: AsyncGenerator[bytes, None], call: ResponsesCall, store: ResponseStore, tenant: str
) -> AsyncGenerator[bytes, None]:
    """The stream's pieces; once the Response is final (its closing event is the next
    piece), it is stored, then that piece goes out."""
    saved = False
    try:
        async for piece in body:
            if call.final is not None and not saved:
                saved = True
                await store.save(_stored(call, tenant))
            yield piece
    finally:
        await body.aclose()  # a client that left: the stream's own `finally` bills it


routes = [HTTPRoute("/v1/responses", create_response, methods=["POST"])]

# --- stored responses (FastAPI; OpenAI's API, so not in the management API's description)

router = APIRouter(tags=["responses"], include_in_schema=False)
_MAX_ITEMS = 100


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str, stream: bool = False) -> Response:
    tenant = authenticate(request).tenant
    if stream:
        raise InvalidRequestError("Streaming a stored response is not supported.", "stream")
    try:
        stored = await services_of(request).database.responses.get(response_id, tenant)
    except SQL_ERRORS:
        raise records_unavailable() from None
    if stored is None:
        raise _not_found(response_id)
    return json_response(stored.response)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    request: Request,
    response_id: str,
    order: Literal["asc", "desc"] = "desc",
    limit: int = Query(20, ge=1, le=_MAX_ITEMS),
    after: str | None = None,
) -> Response:
    tenant = authenticate(request).tenant
    try:
        chain = await services_of(request).database.responses.conversation(response_id, tenant)
    except SQL_ERRORS:
        raise records_unavailable() from None
    if chain is None or chain[-1].id != response_id:
        raise _not_found(response_id)
    items = [*conversation_items(chain[:-1]), *chain[-1].input_items]
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequestError(f"No input item with id '{after}'.", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(items),
        }
    )


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    tenant = authenticate(request).tenant
    try:
        deleted = await services_of(request).database.responses.delete(response_id, tenant)
    except SQL_ERRORS:
        raise records_unavailable() from None
    if not deleted:
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
