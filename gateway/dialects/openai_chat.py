"""Turn raw request bytes into validated requests, or a 400 that names the `param`.

Hand-written checks instead of a pydantic model of the whole body: the body stays a
dict (pass-through of parameters we don't know) and validation costs microseconds.
A malformed request never reaches an upstream.
"""

from __future__ import annotations

from typing import Any

from gateway import jsonutil
from gateway.config import DEFAULT_MAX_JSON_DEPTH, RequestLimits
from gateway.errors import GatewayError, InvalidRequestError
from gateway.types import ChatRequest, EmbeddingRequest, JSONObject

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Client-controlled egress (rule 10): a body may never choose where we send our keys.
FORBIDDEN_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "extra_headers",
        "user_config",
        "custom_llm_provider",
        "headers",
        "organization",
        "azure_ad_token",
        "aws_access_key_id",
    }
)

_NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INTS = ("n", "max_tokens", "max_completion_tokens", "top_logprobs", "seed")
DONE_LINE = b"data: [DONE]\n\n"  # the end of a stream


def decode_object(raw: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> JSONObject:
    if not raw:
        raise InvalidRequestError("Request body is empty; expected a JSON object.")
    try:
        data = jsonutil.loads(raw)
    except jsonutil.JSONDecodeError as exc:
        raise InvalidRequestError(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("Request body must be a JSON object.")
    # Fewer brackets than the limit cannot nest deeper: the walk only runs on suspect bodies.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _too_deep(data, max_depth):
        raise InvalidRequestError(f"Request body nests deeper than {max_depth} levels.")
    return data


def _too_deep(data: JSONObject, max_depth: int) -> bool:
    """Counts container levels, as the JSON libraries do."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_chat_request(raw: bytes, limits: RequestLimits) -> ChatRequest:
    return parse_chat_body(decode_object(raw, limits.max_json_depth), limits)


def parse_chat_body(body: JSONObject, limits: RequestLimits) -> ChatRequest:
    """A decoded chat body -> the internal request (other dialects build one and come
    here: every chat check applies to what they send upstream)."""
    reject_forbidden(body)
    model = _required_str(body, "model")
    messages = _messages(body.get("messages"), limits)
    _check_scalars(body, limits)
    _check_tools(body, limits)
    _check_response_format(body)
    stream = _optional_bool(body, "stream") or False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequestError("stream_options must be an object.", param="stream_options")
    include_usage = bool(stream and options and options.get("include_usage") is True)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return ChatRequest(model, messages, body, stream, include_usage, max_tokens)


def parse_embedding_request(raw: bytes, limits: RequestLimits) -> EmbeddingRequest:
    body = decode_object(raw, limits.max_json_depth)
    reject_forbidden(body)
    model = _required_str(body, "model")
    value = body.get("input")
    if isinstance(value, str):
        inputs: Any = [value]
    elif isinstance(value, list) and value and _all_str_or_tokens(value):
        inputs = value
    else:
        raise InvalidRequestError(
            "input must be a non-empty string or array of strings or token arrays.",
            param="input",
        )
    if len(inputs) > limits.max_messages:
        raise InvalidRequestError(f"input has more than {limits.max_messages} items.", "input")
    return EmbeddingRequest(model, inputs, body)


def _all_str_or_tokens(items: list[Any]) -> bool:
    if all(isinstance(i, str) for i in items):
        return True
    if _all_tokens(items):
        return True
    return all(isinstance(i, list) and i and _all_tokens(i) for i in items)


def _all_tokens(items: list[Any]) -> bool:
    """Token ids: integers, and JSON `true`/`false` are not (Python's bool is an int)."""
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)


def reject_forbidden(body: JSONObject) -> None:
    for key in body:
        if key in FORBIDDEN_FIELDS:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {key}. Upstream settings come from "
                "the gateway's configuration only.",
                param=key,
            )


def _required_str(body: JSONObject, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"'{name}' is required and must be a non-empty string.", name)
    return value


def _optional_bool(body: JSONObject, name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(f"'{name}' must be a boolean.", param=name)
    return value


def _messages(value: object, limits: RequestLimits) -> list[JSONObject]:
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("'messages' must be a non-empty array.", param="messages")
    if len(value) > limits.max_messages:
        raise InvalidRequestError(
            f"'messages' has more than {limits.max_messages} items.", param="messages"
        )
    for index, message in enumerate(value):
        _check_message(message, f"messages[{index}]")
    return value


def _check_message(message: object, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"'{where}' must be an object.", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(
            f"'{where}.role' must be one of {sorted(ROLES)}, got {role!r}.", param=f"{where}.role"
        )
    content = message.get("content")
    if content is None:
        if role in ("assistant", "function") or message.get("tool_calls"):
            return
        raise InvalidRequestError(f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise InvalidRequestError(
            f"'{where}.content' must be a string or an array of content parts.",
            param=f"{where}.content",
        )
    for index, part in enumerate(content):
        kind = part.get("type")
        if not isinstance(kind, str):
            raise InvalidRequestError(
                f"'{where}.content[{index}].type' is required.",
                param=f"{where}.content[{index}].type",
            )
        _check_part(part, kind, f"{where}.content[{index}]")


# What each known content part type must carry (unknown types pass through untouched).
_PART_FIELDS: dict[str, tuple[str, type, str]] = {
    "text": ("text", str, "a string"),
    "refusal": ("refusal", str, "a string"),
    "image_url": ("image_url", dict, "an object with a 'url'"),
    "input_audio": ("input_audio", dict, "an object"),
    "file": ("file", dict, "an object"),
}


def _check_part(part: JSONObject, kind: str, where: str) -> None:
    spec = _PART_FIELDS.get(kind)
    if spec is None:
        return
    name, expected, wording = spec
    value = part.get(name)
    ok = isinstance(value, expected)
    if isinstance(value, dict) and kind == "image_url":
        ok = isinstance(value.get("url"), str)
    if not ok:
        raise InvalidRequestError(f"'{where}.{name}' must be {wording}.", param=f"{where}.{name}")


def _check_scalars(body: JSONObject, limits: RequestLimits) -> None:
    for name, (low, high) in _NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not low <= value <= high:
            raise InvalidRequestError(
                f"'{name}' must be a number between {low:g} and {high:g}.", param=name
            )
    for name in _POSITIVE_INTS:
        value = body.get(name)
        if value is None:
            continue
        minimum = -(2**63) if name == "seed" else (0 if name == "top_logprobs" else 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidRequestError(f"'{name}' must be an integer >= {minimum}.", param=name)
    if isinstance(body.get("n"), int) and body["n"] > limits.max_n:
        raise InvalidRequestError(f"'n' must be at most {limits.max_n}.", param="n")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequestError("'stop' must be a string or an array of strings.", "stop")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_tools(body: JSONObject, limits: RequestLimits) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list) or len(tools) > limits.max_tools:
        raise InvalidRequestError(
            f"'tools' must be an array of at most {limits.max_tools} tools.", "tools"
        )
    for index, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(
                f"'tools[{index}].function.name' is required.", f"tools[{index}].function.name"
            )


def _check_response_format(body: JSONObject) -> None:
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and isinstance(fmt.get("type"), str)):
        raise InvalidRequestError(
            "'response_format' must be an object with a 'type'.", "response_format"
        )


def encode_chunk(chunk: JSONObject) -> bytes:
    return b"data: " + jsonutil.dumps(chunk) + b"\n\n"


def encode_error(body: JSONObject) -> bytes:
    """The in-band error after the commit point: the SDK raises APIError on it (rule 3)."""
    return b"data: " + jsonutil.dumps(body) + b"\n\n"


class ChatEncoder:
    """A chat stream's events: each chunk as it is, the usage chunk when the client
    asked for it (`stream_options.include_usage`), then `[DONE]`."""

    __slots__ = ("_include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage

    def chunk(self, chunk: JSONObject) -> bytes:
        return encode_chunk(chunk)

    def end(self, usage_chunk: JSONObject | None) -> bytes:
        if usage_chunk is not None and self._include_usage:
            return encode_chunk(usage_chunk) + DONE_LINE
        return DONE_LINE

    def error(self, error: GatewayError) -> bytes:
        return encode_error(error.to_openai_body())


class OpenAIChat:
    """`POST /v1/chat/completions`: the internal format itself."""

    name = "chat"

    def parse(self, raw: bytes, limits: RequestLimits) -> ChatRequest:
        return parse_chat_request(raw, limits)

    def answer(self, completion: JSONObject, req: ChatRequest) -> bytes:
        return jsonutil.dumps(completion)

    def stream(self, req: ChatRequest) -> ChatEncoder:
        return ChatEncoder(req.include_usage)

    def error_body(self, error: GatewayError) -> JSONObject:
        return error.to_openai_body()


CHAT = OpenAIChat()
