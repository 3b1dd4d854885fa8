"""POST /v1/messages: Anthropic's Messages API, served by any chat deployment
(gateway.dialects.anthropic_messages maps it); POST /v1/messages/count_tokens: the
gateway's token estimate of such a request (no upstream call)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.api.chat import answered_in, endpoint
from gateway.api.deps import json_response
from gateway.api.prologue import prologue
from gateway.config import estimate_tokens
from gateway.dialects import MESSAGES


async def count_tokens(request: Request) -> Response:
    """`{"input_tokens": N}`: the estimate the gateway plans and admits with (about 4
    characters a token), for the key's own route; not the upstream tokenizer's count."""
    first = await prologue(request, MESSAGES.parse_count)
    return json_response({"input_tokens": estimate_tokens(first.req.prompt_chars())})


routes = [
    HTTPRoute("/v1/messages", endpoint(MESSAGES), methods=["POST"]),
    HTTPRoute("/v1/messages/count_tokens", answered_in(MESSAGES, count_tokens), methods=["POST"]),
]
