"""Anthropic -> OpenAI: a Messages response becomes a `chat.completion`, a Messages
stream becomes `chat.completion.chunk`s.

Response: text blocks are joined into `message.content`, tool_use blocks become
`tool_calls` (arguments = the input as a JSON string), stop_reason becomes
finish_reason (FINISH_REASONS) and usage follows OpenAI's convention (prompt_tokens
includes cache reads and writes; cached_tokens = cache reads).

An Anthropic stream is a sequence of named events (Anthropic "Streaming Messages"):

    message_start        -> the role-only first chunk; id, model and input usage kept
    content_block_start  -> text: nothing (or its initial text); tool_use: the first
                            tool_call chunk (index, id, type, name, arguments "")
    content_block_delta  -> text_delta: content; input_json_delta: arguments piece
    content_block_stop   -> nothing
    message_delta        -> the finish_reason chunk; final (cumulative) usage
    message_stop         -> done
    ping                 -> nothing
    error                -> raises the matching ProviderError (overloaded -> retryable)

OpenAI tool-call indexes count tool calls (0, 1, ...), not Anthropic content blocks, so
a text block before a tool_use block does not shift the index the client sees. Thinking
blocks and unknown future event types produce nothing (Anthropic documents that new
event types may appear and should be tolerated).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway import jsonutil
from gateway.errors import UpstreamUnavailableError
from gateway.providers.event_stream import Classifier, EventStream
from gateway.providers.openai_side import one_choice_completion
from gateway.types import ChatResponse, JSONObject, Usage

# Anthropic stop_reason -> OpenAI finish_reason.
FINISH_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> the HTTP status it has outside a stream (Anthropic "Errors").
ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from_anthropic(data: object) -> Usage | None:
    """OpenAI convention: prompt_tokens includes cache reads and cache writes."""
    if not isinstance(data, dict):
        return None
    read = _count(data.get("cache_read_input_tokens"))
    write = _count(data.get("cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=_count(data.get("input_tokens")) + read + write,
        completion_tokens=_count(data.get("output_tokens")),
        cached_tokens=read,
        cache_write_tokens=write,
    )


def error_status(data: JSONObject) -> int:
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500


def from_anthropic(data: JSONObject, created_s: int) -> ChatResponse:
    content = data.get("content")
    if not isinstance(content, list):
        raise UpstreamUnavailableError("The upstream returned a message without content.")
    message = _assistant_message(content)
    finish = finish_reason(data.get("stop_reason"))
    usage = usage_from_anthropic(data.get("usage"))
    return one_choice_completion(
        data.get("id"), created_s, data.get("model"), message, finish, usage
    )


def _assistant_message(content: list[object]) -> JSONObject:
    texts: list[str] = []
    calls: list[JSONObject] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = jsonutil.dumps(block.get("input") or {}).decode()
            fn = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": fn})
    message: JSONObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,  # null beside tool calls
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


class AnthropicStream(EventStream):
    """Per-stream state: message id and model, input usage, tool-call numbering."""

    __slots__ = ("_start_usage", "_tool_index")

    def __init__(self, created_s: int, classify: Classifier) -> None:
        super().__init__(created_s, classify)
        self._start_usage: JSONObject = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index

    # --- event handlers ---------------------------------------------------------------
    def _message_start(self, data: JSONObject) -> list[JSONObject]:
        message = data.get("message")
        if not isinstance(message, dict):
            raise UpstreamUnavailableError("The upstream sent message_start without a message.")
        self._id = str(message.get("id") or "")
        self._model = str(message.get("model") or "")
        usage = message.get("usage")
        self._start_usage = dict(usage) if isinstance(usage, dict) else {}
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: JSONObject) -> list[JSONObject]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text":
            text = block.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if block.get("type") != "tool_use":
            return []  # thinking, server tools: nothing an OpenAI client can use
        index = len(self._tool_index)
        self._tool_index[_count(data.get("index"))] = index
        initial = block.get("input")
        call = {
            "index": index,
            "id": block.get("id"),
            "type": "function",
            "function": {
                "name": block.get("name"),
                # Streams start tool_use blocks with input {} and send it as deltas.
                "arguments": jsonutil.dumps(initial).decode() if initial else "",
            },
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, data: JSONObject) -> list[JSONObject]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind != "input_json_delta":
            return []  # thinking_delta, signature_delta, citations_delta
        index = self._tool_index.get(_count(data.get("index")))
        partial = delta.get("partial_json")
        if index is None or not isinstance(partial, str) or not partial:
            return []
        call = {"index": index, "function": {"arguments": partial}}
        return [self._chunk({"tool_calls": [call]})]

    def _message_delta(self, data: JSONObject) -> list[JSONObject]:
        usage = data.get("usage")
        # message_delta usage is cumulative; fields it omits keep message_start's values.
        merged = {**self._start_usage}
        if isinstance(usage, dict):
            merged.update({k: v for k, v in usage.items() if v is not None})
        self.usage = usage_from_anthropic(merged)
        delta = data.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop_reason is None:
            return []
        return [self._chunk({}, finish_reason(stop_reason))]

    def _message_stop(self, data: JSONObject) -> list[JSONObject]:
        self.done = True
        return []

    def _error(self, data: JSONObject) -> list[JSONObject]:
        raise self._classify(error_status(data), jsonutil.dumps(data), {})

    def _ignore(self, data: JSONObject) -> list[JSONObject]:
        return []


AnthropicStream.handlers = {
    "message_start": AnthropicStream._message_start,
    "content_block_start": AnthropicStream._block_start,
    "content_block_delta": AnthropicStream._block_delta,
    "content_block_stop": AnthropicStream._ignore,
    "message_delta": AnthropicStream._message_delta,
    "message_stop": AnthropicStream._message_stop,
    "ping": AnthropicStream._ignore,
    "error": AnthropicStream._error,
}
