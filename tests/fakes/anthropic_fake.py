"""A fake Anthropic Messages API: `POST /v1/messages`, JSON or SSE.

It rejects (400, Anthropic-shaped, and records a violation) what the real API rejects:
a wrong `x-api-key`, a missing `anthropic-version`, any `Authorization` header, a
missing or non-integer `max_tokens`, unknown top-level fields, messages that do not
alternate or do not start with a user turn, a `system` role inside messages, unknown
or malformed content blocks (blank text, bad image sources), tool results that answer
no tool_use of the previous assistant turn (or come after other blocks), tool uses
left unanswered, a temperature outside 0..1, and malformed tools or tool_choice.

Answers are deterministic: a fixed reply (one word = one token for `max_tokens`), a
tool call (text preamble + tool_use) when tools are offered and the last turn holds no
tool result, a signed thinking block first when thinking is on (streamed as
thinking_delta then signature_delta), fixed usage numbers. Streams send the full event
sequence, ping included.
Scripting: `Behaviour(status=529)` answers an `overloaded_error` body, `status=429`
a `rate_limit_error` (add `headers={"retry-after": "3"}`), `hang_s`, `drop_after_chunks`;
`AnthropicBehaviour(error_event_after=N)` sends an in-stream `error` event after N events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.server import Behaviour, FakeServer, Handler, write_sse

API_VERSIONS = ("2023-06-01", "2023-01-01")
FORBIDDEN_HEADERS = ("authorization", "cookie", "openai-organization", "x-forwarded-for")
TOP_LEVEL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "service_tier",
    }
)
# Top-level fields the API takes only with their beta in `anthropic-beta`.
BETA_FIELDS = {
    "context_management": "context-management-2025-06-27",
    "mcp_servers": "mcp-client-2025-04-04",
}
MIN_THINKING_BUDGET = 1024
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
BLOCK_TYPES = {
    "user": ("text", "image", "document", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
TOOL_INPUT = {"city": "Paris"}
TOOL_PREAMBLE = "Let me check."
THINKING = "The user wants a greeting."  # the thinking block, when thinking is on
SIGNATURE = "EqQBCkgIARABGAIiQL-fake-signature=="


@dataclass
class AnthropicBehaviour(Behaviour):
    error_event_after: int | None = None  # streams: an `error` event after N events
    error_message: str = "Overloaded"  # that event's message (e.g. one echoing a key)


class FakeAnthropic(FakeServer):
    name = "anthropic"

    def __init__(self, api_key: str = "sk-ant-fake-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.reply = "Hello from the fake Claude."
        self.input_tokens = 21
        self.output_tokens = 9
        self.cache_read_tokens = 0
        self.cache_creation_tokens = 0

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/messages", _messages)]

    def validate(self, request: web.Request, body: Any) -> list[str]:
        problems = header_problems(request.headers, self.api_key)
        if not isinstance(body, dict):
            return [*problems, "body must be a JSON object"]
        betas = {b.strip() for b in request.headers.get("anthropic-beta", "").split(",")}
        return problems + body_problems(body, betas)

    def error_body(self, status: int) -> Any:
        kind = ERROR_TYPES.get(status, "api_error")
        message = "Overloaded" if status == 529 else f"fake {kind} ({status})"
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_f"}

    def invalid_body(self, message: str) -> Any:
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}

    def usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "output_tokens": output_tokens,
        }


# --- validation ------------------------------------------------------------------------


def header_problems(headers: Any, api_key: str) -> list[str]:
    problems = [f"forbidden header {name}" for name in FORBIDDEN_HEADERS if name in headers]
    if headers.get("x-api-key") != api_key:
        problems.append("x-api-key: invalid or missing")
    if headers.get("anthropic-version") not in API_VERSIONS:
        problems.append(f"anthropic-version: {headers.get('anthropic-version')!r} is not valid")
    if not str(headers.get("content-type", "")).startswith("application/json"):
        problems.append("content-type must be application/json")
    return problems


def body_problems(
    body: dict[str, Any], betas: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """`betas`: the request's `anthropic-beta` names (which admit BETA_FIELDS)."""
    allowed = TOP_LEVEL_FIELDS | {k for k, beta in BETA_FIELDS.items() if beta in betas}
    problems = [f"{key}: Extra inputs are not permitted" for key in body if key not in allowed]
    problems += _thinking_problems(body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model: Field required")
    tokens = body.get("max_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        problems.append("max_tokens: Field required (an integer >= 1)")
    problems += _range_problems(body) + _system_problems(body.get("system"))
    problems += _tool_problems(body) + _format_problems(body.get("output_config"))
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        problems.append("metadata: only user_id is allowed")
    return problems + message_problems(body.get("messages"))


def _range_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
            problems.append(f"{name}: must be a number between 0 and 1")
    if body.get("temperature") is not None and body.get("top_p") is not None:
        problems.append("`temperature` and `top_p` cannot both be specified for this model.")
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        problems.append("stop_sequences: must be a list of strings")
    if "stream" in body and not isinstance(body["stream"], bool):
        problems.append("stream: must be a boolean")
    return problems


def _thinking_problems(body: dict[str, Any]) -> list[str]:
    """Extended thinking (Anthropic "Building with extended thinking"): enabled needs a
    budget of at least 1024 tokens below max_tokens, and is incompatible with changed
    temperature or top_k, top_p below 0.95, and forced tool use."""
    thinking = body.get("thinking")
    if thinking is None:
        return []
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        return ["thinking.type: must be enabled, disabled or adaptive"]
    if kind == "disabled":
        return []
    problems = []
    budget = thinking.get("budget_tokens")
    if kind == "enabled" and not (
        isinstance(budget, int) and MIN_THINKING_BUDGET <= budget < body.get("max_tokens", 0)
    ):
        problems.append("thinking.budget_tokens: must be >= 1024 and less than max_tokens")
    if body.get("temperature") not in (None, 1):
        problems.append("temperature: may only be set to 1 when thinking is enabled")
    if body.get("top_k") is not None:
        problems.append("top_k: is not compatible with thinking")
    top_p = body.get("top_p")
    if top_p is not None and not 0.95 <= top_p <= 1:
        problems.append("top_p: must be between 0.95 and 1 when thinking is enabled")
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        problems.append("tool_choice: forced tool use is not compatible with thinking")
    return problems


def _system_problems(system: Any) -> list[str]:
    if system is None or (isinstance(system, str) and system):
        return []
    if isinstance(system, list) and system and all(_is_text(b) for b in system):
        return []
    return ["system: must be a non-empty string or a list of text blocks"]


def _is_text(block: Any) -> bool:
    text = block.get("text") if isinstance(block, dict) else None
    return block.get("type") == "text" and isinstance(text, str) and bool(text.strip())


def _tool_problems(body: dict[str, Any]) -> list[str]:
    tools, choice = body.get("tools"), body.get("tool_choice")
    problems = []
    names = set()
    for index, tool in enumerate(tools or []):
        name = tool.get("name") if isinstance(tool, dict) else None
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            problems.append(f"tools.{index}.name: invalid")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            problems.append(f"tools.{index}.input_schema: must be an object schema")
        extra = set(tool) - {"name", "description", "input_schema", "strict", "cache_control"}
        problems += [f"tools.{index}.{key}: Extra inputs are not permitted" for key in extra]
        names.add(name)
    if choice is not None:
        problems += _choice_problems(choice, names)
    return problems


def _choice_problems(choice: Any, names: set[Any]) -> list[str]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        return [f"tool_choice.type: invalid {kind!r}"]
    if kind == "tool" and choice.get("name") not in names:
        return ["tool_choice.name: no tool with that name"]
    allowed = {"type", "name"} if kind == "tool" else {"type"}
    if kind != "none":
        allowed.add("disable_parallel_tool_use")
    return [f"tool_choice.{key}: Extra inputs are not permitted" for key in set(choice) - allowed]


def _format_problems(config: Any) -> list[str]:
    if config is None:
        return []
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return ["output_config.format.type: must be json_schema"]
    return [] if isinstance(fmt.get("schema"), dict) else ["output_config.format.schema: required"]


def message_problems(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages: at least one message is required"]
    problems = []
    previous: dict[str, Any] | None = None
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            problems.append(f"{where}: only role and content are allowed")
            continue
        role = message.get("role")
        if role not in BLOCK_TYPES:
            problems.append(f"{where}.role: {role!r} is not allowed (system goes top-level)")
            continue
        if index == 0 and role != "user":
            problems.append('messages: first message must use the "user" role')
        if previous is not None and previous.get("role") == role:
            problems.append(f"{where}: roles must alternate between user and assistant")
        problems += _content_problems(message, previous, where)
        previous = message
    return problems


def _blocks(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def _content_problems(message: dict[str, Any], previous: Any, where: str) -> list[str]:
    content = message.get("content")
    if not content or not isinstance(content, str | list):
        return [f"{where}.content: must be a non-empty string or list of blocks"]
    problems = []
    role = message["role"]
    asked = _tool_use_ids(previous) if previous and previous.get("role") == "assistant" else set()
    answered = set()
    seen_other = False
    for index, block in enumerate(_blocks(message)):
        here = f"{where}.content.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in BLOCK_TYPES[role]:
            problems.append(f"{here}.type: {kind!r} is not valid in a {role} message")
            continue
        if kind == "tool_result":
            answered.add(block.get("tool_use_id"))
            if block.get("tool_use_id") not in asked:
                problems.append(f"{here}: tool_result answers no tool_use of the previous turn")
            if seen_other:
                problems.append(f"{here}: tool_result blocks must come first")
        else:
            seen_other = True
        problems += _block_problems(block, here)
    if role == "user" and asked - answered:
        problems.append(f"{where}: tool_use ids without tool_result: {sorted(asked - answered)}")
    return problems


def _tool_use_ids(message: dict[str, Any]) -> set[Any]:
    return {
        b.get("id") for b in _blocks(message) if isinstance(b, dict) and b.get("type") == "tool_use"
    }


def _block_problems(block: dict[str, Any], where: str) -> list[str]:
    kind = block["type"]
    if kind == "text" and not _is_text(block):
        return [f"{where}.text: text content blocks must contain non-whitespace text"]
    if kind in ("image", "document"):
        return _source_problems(block.get("source"), kind, where)
    if kind == "tool_use":
        valid = isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
        return [] if valid and isinstance(block.get("input"), dict) else [f"{where}: bad tool_use"]
    if kind == "tool_result":
        return _tool_result_problems(block.get("content"), where)
    if kind == "thinking":  # sent back as it came: the signature is checked upstream
        valid = isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
        return [] if valid and block["signature"] else [f"{where}: thinking needs a signature"]
    if kind == "redacted_thinking":
        return [] if isinstance(block.get("data"), str) else [f"{where}.data: required"]
    return []


def _tool_result_problems(content: Any, where: str) -> list[str]:
    """A tool result's content: a string, or text, image and document blocks."""
    if content is None or isinstance(content, str):
        return []
    if not isinstance(content, list):
        return [f"{where}.content: bad tool_result content"]
    problems = []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        here = f"{where}.content.{index}"
        if kind == "text":
            problems += [] if _is_text(block) else [f"{here}: bad tool_result content"]
        elif kind in ("image", "document"):
            problems += _source_problems(block.get("source"), kind, here)
        else:
            problems.append(f"{here}: bad tool_result content")
    return problems


def _source_problems(source: Any, kind: str, where: str) -> list[str]:
    if not isinstance(source, dict):
        return [f"{where}.source: required"]
    if source.get("type") == "url" and kind == "image":
        url = source.get("url")
        return [] if isinstance(url, str) and url.startswith("http") else [f"{where}.source.url"]
    if source.get("type") != "base64" or not isinstance(source.get("data"), str):
        return [f"{where}.source: must be base64 (or url for images)"]
    allowed = IMAGE_TYPES if kind == "image" else ("application/pdf",)
    if source.get("media_type") not in allowed:
        return [f"{where}.source.media_type: {source.get('media_type')!r} is not supported"]
    return []


# --- answers -------------------------------------------------------------------------


def _wants_tool(body: dict[str, Any]) -> bool:
    choice = (body.get("tool_choice") or {}).get("type")
    last = body["messages"][-1]
    answered = any(isinstance(b, dict) and b.get("type") == "tool_result" for b in _blocks(last))
    return bool(body.get("tools")) and choice != "none" and not answered


def _tool_name(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice") or {}
    return str(choice["name"] if choice.get("type") == "tool" else body["tools"][0]["name"])


def _reply(fake: FakeAnthropic, body: dict[str, Any], b: Behaviour) -> tuple[list[str], str]:
    words = (b.content or fake.reply).split(" ")
    if len(words) > body["max_tokens"]:
        return words[: body["max_tokens"]], "max_tokens"
    return words, "end_turn"


def _thinks(body: dict[str, Any]) -> bool:
    return (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")


def _message(fake: FakeAnthropic, body: dict[str, Any], b: Behaviour) -> dict[str, Any]:
    words, stop_reason = _reply(fake, body, b)
    content: list[dict[str, Any]] = [{"type": "text", "text": " ".join(words)}]
    if _wants_tool(body):
        content = [{"type": "text", "text": TOOL_PREAMBLE}, _tool_use(body, TOOL_INPUT)]
        stop_reason = "tool_use"
    if _thinks(body):  # a thinking block first, signed (the next turn sends it back)
        content.insert(0, {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE})
    return {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": fake.usage(min(fake.output_tokens, body["max_tokens"])),
    }


def _tool_use(body: dict[str, Any], tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_fake01", "name": _tool_name(body), "input": tool_input}


async def _messages(
    request: web.Request, fake: FakeServer, b: Behaviour, body: Any
) -> web.StreamResponse:
    assert isinstance(fake, FakeAnthropic)
    headers = {"request-id": "req_fake01"}
    if not body.get("stream"):
        return web.json_response(_message(fake, body, b), headers=headers)
    events = _stream_events(fake, body, b)
    after = b.error_event_after if isinstance(b, AnthropicBehaviour) else None
    if after is not None:
        assert isinstance(b, AnthropicBehaviour)
        overloaded = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": b.error_message},
        }
        events = [*events[:after], _event("error", overloaded)]
    return await write_sse(request, events, b)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _stream_events(fake: FakeAnthropic, body: dict[str, Any], b: Behaviour) -> list[bytes]:
    final = _message(fake, body, b)
    start = {**final, "content": [], "stop_reason": None, "usage": fake.usage(1)}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(final["content"]):
        events += _block_events(index, block)
        if index == 0:
            events.insert(2, _event("ping", {"type": "ping"}))
    delta = {"stop_reason": final["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": final["usage"]["output_tokens"]}
    events.append(
        _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    )
    return [*events, _event("message_stop", {"type": "message_stop"})]


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    if block["type"] == "thinking":  # thinking deltas, then the signature in its own delta
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                  {"type": "signature_delta", "signature": block["signature"]}]  # fmt: skip
        return [
            _event("content_block_start",
                   {"type": "content_block_start", "index": index, "content_block": start}),
            *(_event("content_block_delta",
                     {"type": "content_block_delta", "index": index, "delta": d})
              for d in deltas),
            _event("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]  # fmt: skip
    if block["type"] == "text":
        start, kind, key = {"type": "text", "text": ""}, "text_delta", "text"
        words = block["text"].split(" ")
        pieces = [w if not i else " " + w for i, w in enumerate(words)]
    else:
        start, kind, key = {**block, "input": {}}, "input_json_delta", "partial_json"
        text = json.dumps(block["input"])
        pieces = ["", text[:5], text[5:12], text[12:]]  # the docs show a leading "" delta
    events = [
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
    ]
    for piece in pieces:
        delta = {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: piece}}
        events.append(_event("content_block_delta", delta))
    return [*events, _event("content_block_stop", {"type": "content_block_stop", "index": index})]
