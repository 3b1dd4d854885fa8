"""OpenAI's Responses API (`POST /v1/responses`), served by chat deployments of any
provider through the internal request (an OpenAI chat body).

`RESPONSES.begin(raw, limits)` checks a body (400s naming the param) and returns the
request's own dialect, a `ResponsesCall`: it holds what the Response object echoes and
its id, takes the stored conversation a `previous_response_id` continues
(`continues`), parses into the chat request (instructions as the first system
message, then the earlier turns, then this input), and keeps the Response it answered
with (`final`: completed or incomplete) for the store. Errors are OpenAI's shape.

The chat request also carries, as its native body, what a deployment with
`responses_api: true` is sent instead (`native`); such a deployment's Response and
events come back as they came, made the gateway's (`native_answer`, the encoder's
`raw`). A request only the Responses API itself serves (built-in tools, files) needs
that capability: other deployments are not eligible for it, and it is not cached.
"""

from __future__ import annotations

from gateway import jsonutil
from gateway.config import RESPONSES_API, RequestLimits
from gateway.dialects.openai_chat import decode_object, parse_chat_body, reject_forbidden
from gateway.dialects.openai_responses.events import ResponsesEncoder
from gateway.dialects.openai_responses.native import own_response, upstream_body
from gateway.dialects.openai_responses.output import ResponseShell
from gateway.dialects.openai_responses.request import ResponsesInput, parse_request, to_messages
from gateway.errors import GatewayError
from gateway.types import ChatRequest, JSONObject, NativeBody

_NATIVE_ONLY = frozenset({RESPONSES_API})


class ResponsesCall:
    """One /v1/responses request as a dialect of its own (it is stateful: one per request)."""

    name = "responses"

    def __init__(self, parsed: ResponsesInput) -> None:
        self.input = parsed
        self.shell = ResponseShell(
            parsed.model, parsed.instructions, parsed.previous_response_id, parsed.store,
            parsed.echo,
        )  # fmt: skip
        self.history: list[JSONObject] = []
        self.final: JSONObject | None = None  # the Response answered (completed, incomplete)

    @property
    def id(self) -> str:
        return self.shell.id

    @property
    def store(self) -> bool:
        return self.input.store

    @property
    def previous_response_id(self) -> str | None:
        return self.input.previous_response_id

    @property
    def items(self) -> list[JSONObject]:
        """This request's input items, as stored."""
        return self.input.items

    def continues(self, history: list[JSONObject]) -> None:
        """The earlier turns (stored items, oldest first) go before this input."""
        self.history = history

    def parse(self, raw: bytes, limits: RequestLimits) -> ChatRequest:
        """The checked body (`raw` was decoded by `RESPONSES.begin`) -> the chat request."""
        parsed = self.input
        messages: list[JSONObject] = []
        if parsed.instructions:
            messages.append({"role": "system", "content": parsed.instructions})
        messages += to_messages(self.history)
        messages += to_messages(parsed.items)
        chat: JSONObject = {"model": parsed.model, "messages": messages, **parsed.chat}
        if parsed.stream:  # usage always: response.completed carries it
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        req = parse_chat_body(chat, limits)
        native_only = parsed.native_only is not None
        req.native = NativeBody(
            self.name,
            upstream_body(parsed.body, self.history, parsed.store),
            cacheable=not native_only,
            requires=_NATIVE_ONLY if native_only else frozenset(),
            requires_param=parsed.native_only,
        )
        return req

    def answer(self, completion: JSONObject, req: ChatRequest) -> bytes:
        self.final = self.shell.from_completion(completion)
        return jsonutil.dumps(self.final)

    def native_answer(self, body: bytes) -> bytes:
        """A Responses API deployment's own Response, made this request's."""
        self.final = own_response(jsonutil.loads(body), self.shell)
        return jsonutil.dumps(self.final)

    def stream(self, req: ChatRequest) -> ResponsesEncoder:
        return ResponsesEncoder(self.shell, self._finished)

    def _finished(self, response: JSONObject) -> None:
        self.final = response

    def error_body(self, error: GatewayError) -> JSONObject:
        return error.to_openai_body()


class OpenAIResponses:
    name = "responses"

    def begin(self, raw: bytes, limits: RequestLimits) -> ResponsesCall:
        body = decode_object(raw, limits.max_json_depth)
        reject_forbidden(body)
        return ResponsesCall(parse_request(body, limits))

    def error_body(self, error: GatewayError) -> JSONObject:
        return error.to_openai_body()


RESPONSES = OpenAIResponses()

__all__ = ["RESPONSES", "OpenAIResponses", "ResponsesCall"]
