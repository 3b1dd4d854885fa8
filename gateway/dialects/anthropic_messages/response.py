"""The internal answer -> Anthropic's `message` object, its stream events and errors.

Message: `id` msg_..., content blocks (thinking, when an OpenAI-compatible upstream
sent `reasoning_content`; text; tool_use with the arguments parsed), `stop_reason`
(STOP_REASONS; `stop_sequence` only when the upstream names the sequence it hit, as
vLLM's `stop_reason` does), usage in Anthropic's convention (input_tokens excludes the
cache reads, which are `cache_read_input_tokens`; cache writes stay in input_tokens:
the internal usage does not split them out).

Stream, in Anthropic's order: message_start (input_tokens: the gateway's estimate, the
real count comes in message_delta), ping, then per block content_block_start, its
deltas (text_delta, input_json_delta, thinking_delta), content_block_stop; at the end
message_delta (stop_reason, usage) and message_stop. A failure past the commit point is
`event: error` with the error body, and nothing after it.

A native stream (an Anthropic deployment sent the client's own body): `raw` relays the
upstream's events as they came (event: line and data), thinking and signature deltas
included; the in-band error is the same.
"""

from __future__ import annotations

from gateway import jsonutil
from gateway.config import estimate_tokens
from gateway.errors import GatewayError
from gateway.types import ChatRequest, JSONObject, SSEEvent, Usage

# internal finish_reason -> Anthropic stop_reason (anything else: end_turn)
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# HTTP status -> Anthropic error type; other 4xx: invalid_request_error, 5xx: api_error.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(error: GatewayError) -> JSONObject:
    status = error.status
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def message_id(source_id: object) -> str:
    text = str(source_id or "")
    if text.startswith("msg_"):
        return text
    return "msg_" + (text.removeprefix("chatcmpl-") or "gateway")


def anthropic_usage(usage: object) -> JSONObject:
    u = Usage.from_openai(usage) or Usage()
    return {
        "input_tokens": max(0, u.prompt_tokens - u.cached_tokens),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
    }


def stop_reason(
    finish: object, matched: object, req: ChatRequest, called_tools: bool
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished choice."""
    stops = req.body.get("stop") or ()
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if reason == "end_turn" and called_tools:
        reason = "tool_use"
    return reason, None


def tool_input(arguments: object) -> JSONObject:
    """A tool call's arguments as the tool_use input object: {} when empty; arguments
    that are not a JSON object are kept whole under "arguments" (never lost)."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = jsonutil.loads(arguments)
    except jsonutil.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return "".join(str(p.get("text") or "") for p in value if isinstance(p, dict))
    return ""


def _reasoning(fields: JSONObject) -> object:
    return fields.get("reasoning_content") or fields.get("reasoning")


def to_message(completion: JSONObject, req: ChatRequest) -> JSONObject:
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[JSONObject] = []
    reasoning = _reasoning(message)
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(message.get("content")) or _text(message.get("refusal"))
    if text:
        content.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    for index, call in enumerate(calls):
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{index}",
                "name": fn.get("name") or "",
                "input": tool_input(fn.get("arguments")),
            }
        )
    reason, sequence = stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), req, bool(calls)
    )
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(completion.get("usage")),
    }


def event(name: str, data: JSONObject) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + jsonutil.dumps(data) + b"\n\n"


PING = event("ping", {"type": "ping"})


class MessagesEncoder:
    """One stream's events. Blocks are opened as the internal deltas change kind (text,
    thinking, a new tool call) and closed before the next one opens."""

    __slots__ = (
        "_block",
        "_chars",
        "_finish",
        "_kind",
        "_matched",
        "_native",
        "_req",
        "_started",
        "_tools",
    )

    def __init__(self, req: ChatRequest) -> None:
        self._req = req
        self._started = False
        self._block = -1  # the index of the last block opened
        self._kind: str | None = None  # the open block's type
        self._tools: dict[int, int] = {}  # internal tool-call index -> block index
        self._finish: object = None
        self._matched: object = None
        self._chars = 0  # text produced, for the output estimate when no usage comes
        self._native = False  # fed an Anthropic upstream's own events (`raw`)

    def raw(self, event: SSEEvent) -> bytes:
        """An Anthropic upstream's event, as it came (a native stream: the upstream was
        sent the client's body). Its message_delta and message_stop end the stream."""
        self._native = True
        out = b"event: " + event.event.encode() + b"\n" if event.event else b""
        for line in event.data.split("\n"):
            out += b"data: " + line.encode() + b"\n"
        return out + b"\n"

    def chunk(self, chunk: JSONObject) -> bytes:
        out = b"" if self._started else self._start(chunk)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # the Messages API has one answer per request
            delta = choice.get("delta") or {}
            reasoning = _reasoning(delta)
            if isinstance(reasoning, str) and reasoning:
                out += self._piece("thinking", "thinking_delta", "thinking", reasoning)
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                out += self._piece("text", "text_delta", "text", text)
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self._finish, self._matched = choice["finish_reason"], choice.get("stop_reason")
        return out

    def end(self, usage_chunk: JSONObject | None) -> bytes:
        if self._native:
            return b""  # the upstream's own message_delta and message_stop went out
        out = b"" if self._started else self._start(usage_chunk or {})
        out += self._close()
        reason, sequence = stop_reason(self._finish, self._matched, self._req, bool(self._tools))
        if usage_chunk is not None and usage_chunk.get("usage"):
            usage = anthropic_usage(usage_chunk["usage"])
        else:  # the upstream sent none: the gateway's estimates (as it bills)
            usage = self._usage(estimate_tokens(self._chars))
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out += event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + event("message_stop", {"type": "message_stop"})

    def error(self, error: GatewayError) -> bytes:
        return event("error", error_body(error))

    def _start(self, chunk: JSONObject) -> bytes:
        self._started = True
        message: JSONObject = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(0),
        }
        return event("message_start", {"type": "message_start", "message": message}) + PING

    def _usage(self, output_tokens: int) -> JSONObject:
        return {
            "input_tokens": estimate_tokens(self._req.prompt_chars()),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def _open(self, kind: str, block: JSONObject) -> bytes:
        out = self._close()
        self._block += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + event("content_block_start", start)

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _piece(self, kind: str, delta_type: str, key: str, text: str) -> bytes:
        out = b""
        if self._kind != kind:
            initial: JSONObject = {"type": kind, key: ""}
            if kind == "thinking":
                initial["signature"] = ""
            out = self._open(kind, initial)
        self._chars += len(text)
        delta = {"type": "content_block_delta", "index": self._block,
                 "delta": {"type": delta_type, key: text}}  # fmt: skip
        return out + event("content_block_delta", delta)

    def _tool_call(self, call: JSONObject) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        out = b""
        block = self._tools.get(index)
        if block is None:
            tool_use: JSONObject = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{index}",
                "name": fn.get("name") or "",
                "input": {},
            }
            out = self._open("tool_use", tool_use)
            block = self._tools[index] = self._block
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._chars += len(arguments)
            delta = {"type": "content_block_delta", "index": block,
                     "delta": {"type": "input_json_delta", "partial_json": arguments}}  # fmt: skip
            out += event("content_block_delta", delta)
        return out
