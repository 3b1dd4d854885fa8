"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`), served by
any chat deployment through the internal request: `request` maps the body in,
`response` the message, its stream events and the errors out.

Errors are Anthropic-shaped, `{"type": "error", "error": {"type", "message"}}`, the type
from the status (response.ERROR_TYPES): 400 invalid_request_error, 401
authentication_error, 403 permission_error, 404 not_found_error, 413 request_too_large,
429 rate_limit_error, 503 overloaded_error, 504 timeout_error, other 5xx api_error.
"""

from __future__ import annotations

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.dialects.anthropic_messages.request import thinks, to_chat_body
from gateway.dialects.anthropic_messages.response import MessagesEncoder, error_body, to_message
from gateway.dialects.openai_chat import decode_object, parse_chat_body
from gateway.errors import GatewayError
from gateway.types import ChatRequest, JSONObject, NativeBody

# The client headers an Anthropic deployment is sent with the client's own body.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


class AnthropicMessages:
    name = "messages"

    def parse(self, raw: bytes, limits: RequestLimits) -> ChatRequest:
        """The internal request, carrying the client's body as its native payload: an
        Anthropic deployment is sent that body as it came (gateway.providers.anthropic),
        every other one the chat body translated from it."""
        body = decode_object(raw, limits.max_json_depth)
        req = parse_chat_body(to_chat_body(body), limits)
        req.native = NativeBody(self.name, body, FORWARDED_HEADERS, cacheable=not thinks(body))
        return req

    def parse_count(self, raw: bytes, limits: RequestLimits) -> ChatRequest:
        """A count_tokens body: a Messages request without max_tokens (nor stream)."""
        body = decode_object(raw, limits.max_json_depth)
        return parse_chat_body(to_chat_body(body, counting=True), limits)

    def answer(self, completion: JSONObject, req: ChatRequest) -> bytes:
        return jsonutil.dumps(to_message(completion, req))

    def stream(self, req: ChatRequest) -> MessagesEncoder:
        return MessagesEncoder(req)

    def error_body(self, error: GatewayError) -> JSONObject:
        return error_body(error)


MESSAGES = AnthropicMessages()

__all__ = ["MESSAGES", "AnthropicMessages", "MessagesEncoder"]
