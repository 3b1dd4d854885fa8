"""A Responses API request body -> the parts of the internal chat body.

`parse_request` checks the body and splits it into what goes upstream (chat fields),
what the Response object echoes, and this request's input as stored items (each with
an id, in the shape `GET /v1/responses/{id}/input_items` returns). `to_messages` turns
items (this request's, or a stored conversation's) into chat messages.

What only OpenAI's own Responses API can do (built-in tools such as web_search or
file_search and a tool_choice naming one, their call items, `file_id` images,
`input_file` and other parts a chat model has no equivalent for, `top_logprobs`, fields
newer than this gateway) is kept as sent and marks the request `native_only` (with the
first param that needs it): it is then served only by a deployment with
`responses_api: true`. Item references, background mode, conversations and stored
prompts need state kept at OpenAI: a 400 naming the param.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import RequestLimits
from gateway.errors import InvalidRequestError
from gateway.ids import new_id
from gateway.types import JSONObject

# Carried over to the chat body unchanged (the chat checks validate them).
_CARRIED = (
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
)
# Accepted and not acted on: nothing a chat model does with them (`include` asks for
# extra data of built-in tools and reasoning items, which are never produced here).
_ACCEPTED = ("include", "truncation", "stream_options", "prompt_cache_retention",
             "prompt_cache_options", "max_tool_calls")  # fmt: skip
_KNOWN = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
        "reasoning", "metadata", "parallel_tool_calls", "stream", "store",
        "previous_response_id", "background", "conversation", "prompt", "top_logprobs",
        *_CARRIED, *_ACCEPTED,
    }
)  # fmt: skip
_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TOOL_CHOICES = ("none", "auto", "required")
_MAX_METADATA = 16


@dataclass(slots=True)
class ResponsesInput:
    """One request, checked: `chat` holds the chat fields but `model` and `messages`."""

    model: str
    chat: JSONObject
    instructions: str | None
    items: list[JSONObject]  # this request's input, as stored items
    echo: JSONObject  # the request fields the Response object repeats
    stream: bool
    store: bool
    previous_response_id: str | None
    body: JSONObject  # as the client sent it (a native deployment is sent it)
    native_only: str | None = None  # the first param only the Responses API itself serves


def fail(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


class _NativeOnly:
    """The first param of a request that only the Responses API itself serves."""

    __slots__ = ("param",)

    def __init__(self) -> None:
        self.param: str | None = None

    def note(self, param: str) -> None:
        if self.param is None:
            self.param = param


def parse_request(body: JSONObject, limits: RequestLimits) -> ResponsesInput:
    native = _NativeOnly()
    unknown = sorted(set(body) - _KNOWN)
    if unknown:  # a field newer than this gateway: OpenAI's own API may know it
        native.note(unknown[0])
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise fail("'model' is required and must be a non-empty string.", "model")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise fail("'instructions' must be a string.", "instructions")
    items = input_items(body.get("input"), limits, native)
    chat: JSONObject = {k: body[k] for k in _CARRIED if body.get(k) is not None}
    echo: JSONObject = {}
    _tools(body, chat, echo, limits, native)
    _text(body.get("text"), chat, echo)
    _scalars(body, chat, echo)
    if body.get("top_logprobs") not in (None, 0):
        native.note("top_logprobs")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise fail("'previous_response_id' must be a non-empty string.", "previous_response_id")
    stream, store = _flag(body, "stream", False), _flag(body, "store", True)
    return ResponsesInput(
        model, chat, instructions, items, echo, stream, store, previous, body, native.param
    )


def _refuse_unsupported(body: JSONObject) -> None:
    if body.get("background") not in (None, False):
        raise fail("'background' mode is not supported by this gateway.", "background")
    for name in ("conversation", "prompt"):
        if body.get(name) is not None:
            raise fail(
                f"'{name}' is not supported by this gateway: its state lives at OpenAI. "
                "Use previous_response_id, or send the whole input.",
                name,
            )


def _flag(body: JSONObject, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise fail(f"'{name}' must be a boolean.", name)
    return value


def _tools(
    body: JSONObject,
    chat: JSONObject,
    echo: JSONObject,
    limits: RequestLimits,
    native: _NativeOnly,
) -> None:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list) or len(tools) > limits.max_tools:
        raise fail(f"'tools' must be an array of at most {limits.max_tools} tools.", "tools")
    echo["tools"] = [_tool(tool, f"tools[{i}]", native) for i, tool in enumerate(tools)]
    functions = [_chat_tool(tool) for tool in echo["tools"] if tool["type"] == "function"]
    if functions:
        chat["tools"] = functions
    choice = body.get("tool_choice")
    echo["tool_choice"] = "auto" if choice is None else choice
    if choice in _TOOL_CHOICES:
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise fail("'tool_choice.name' is required.", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        native.note("tool_choice")  # a built-in tool, allowed_tools, mcp, custom
    elif choice is not None:
        raise fail(
            "'tool_choice' must be 'none', 'auto', 'required' or an object with a 'type'.",
            "tool_choice",
        )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise fail("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
    echo["parallel_tool_calls"] = True if parallel is None else parallel
    if parallel is not None and functions:  # chat refuses it without tools
        chat["parallel_tool_calls"] = parallel


def _tool(tool: object, where: str, native: _NativeOnly) -> JSONObject:
    if not isinstance(tool, dict):
        raise fail(f"'{where}' must be an object.", where)
    kind = tool.get("type")
    if kind != "function":
        if not isinstance(kind, str) or not kind:
            raise fail(f"'{where}.type' is required.", f"{where}.type")
        native.note(f"{where}.type")  # a built-in tool (web_search, file_search, mcp, ...)
        return dict(tool)
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"'{where}.name' is required.", f"{where}.name")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise fail(f"'{where}.parameters' must be a JSON schema object.", f"{where}.parameters")
    return {
        "type": "function",
        "name": name,
        "description": tool.get("description"),
        "parameters": parameters,
        "strict": tool.get("strict"),
    }


def _chat_tool(tool: JSONObject) -> JSONObject:
    function: JSONObject = {"name": tool["name"]}
    for name in ("description", "parameters", "strict"):
        if tool[name] is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _text(text: object, chat: JSONObject, echo: JSONObject) -> None:
    if text is None:
        text = {}
    if not isinstance(text, dict):
        raise fail("'text' must be an object.", "text")
    fmt = text.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise fail("'text.format' json_schema needs a 'name' and a 'schema'.", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise fail("'text.format.type' must be 'text', 'json_object' or 'json_schema'.",
                   "text.format.type")  # fmt: skip
    echo["text"] = {"format": fmt}
    verbosity = text.get("verbosity")
    if verbosity is not None:
        chat["verbosity"] = echo["text"]["verbosity"] = verbosity


def _scalars(body: JSONObject, chat: JSONObject, echo: JSONObject) -> None:
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise fail("'max_output_tokens' must be an integer >= 1.", "max_output_tokens")
        chat["max_completion_tokens"] = limit
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise fail("'reasoning' must be an object.", "reasoning")
    effort = (reasoning or {}).get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise fail("'reasoning.effort' must be a string.", "reasoning.effort")
        chat["reasoning_effort"] = effort
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= _MAX_METADATA
        and all(isinstance(v, str) for v in metadata.values())
    ):
        raise fail(f"'metadata' must be an object of at most {_MAX_METADATA} strings.",
                   "metadata")  # fmt: skip
    echo.update(
        {
            "max_output_tokens": limit,
            "reasoning": {"effort": effort, "summary": (reasoning or {}).get("summary")},
            "metadata": metadata or {},
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation") or "disabled",
            "user": body.get("user"),
            "max_tool_calls": body.get("max_tool_calls"),
            "service_tier": body.get("service_tier") or "auto",
        }
    )


# --- input items -------------------------------------------------------------------------


def input_items(value: object, limits: RequestLimits, native: _NativeOnly) -> list[JSONObject]:
    """`input` (a string or a list of items) -> stored items, each with an id."""
    if isinstance(value, str):
        return [_message("user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list) or not value:
        raise fail("'input' must be a string or a non-empty array of input items.", "input")
    if len(value) > limits.max_messages:
        raise fail(f"'input' has more than {limits.max_messages} items.", "input")
    items = []
    for index, item in enumerate(value):
        stored = _item(item, f"input[{index}]", native)
        if stored is not None:
            items.append(stored)
    return items


def _message(role: str, content: list[JSONObject], item_id: object = None) -> JSONObject:
    return {
        "id": item_id if isinstance(item_id, str) and item_id else f"msg_{new_id()}",
        "type": "message",
        "role": role,
        "content": content,
        "status": "completed",
    }


def _item(item: object, where: str, native: _NativeOnly) -> JSONObject | None:
    if not isinstance(item, dict):
        raise fail(f"'{where}' must be an object.", where)
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in _MESSAGE_ROLES:
            raise fail(f"'{where}.role' must be one of {sorted(_MESSAGE_ROLES)}.", f"{where}.role")
        content = _content(role, item.get("content"), where, native)
        return _message(role, content, item.get("id"))
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise fail(f"'{where}.{name}' must be a string.", f"{where}.{name}")
        given = item.get("id")
        return {
            "id": given if isinstance(given, str) and given else f"fc_{new_id()}",
            "type": "function_call",
            "call_id": item["call_id"],
            "name": item["name"],
            "arguments": item["arguments"],
            "status": "completed",
        }
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise fail(f"'{where}.call_id' must be a string.", f"{where}.call_id")
        given = item.get("id")
        return {
            "id": given if isinstance(given, str) and given else f"fco_{new_id()}",
            "type": "function_call_output",
            "call_id": item["call_id"],
            "output": _tool_output(item.get("output"), f"{where}.output"),
            "status": "completed",
        }
    if kind == "reasoning":
        return None  # another model's opaque reasoning: nothing a chat model can read
    if kind == "item_reference" or not isinstance(kind, str) or not kind:
        raise fail(
            f"Input items of type {kind!r} are not supported: item references point at "
            "state kept at OpenAI; send the items themselves (or use previous_response_id).",
            f"{where}.type",
        )
    native.note(f"{where}.type")  # a built-in tool's call or output, a custom tool's, ...
    given = item.get("id")
    return {**item, "id": given if isinstance(given, str) and given else f"item_{new_id()}"}


def _content(role: str, content: object, where: str, native: _NativeOnly) -> list[JSONObject]:
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [_text_part(text_type, content)]
    if not isinstance(content, list):
        raise fail(f"'{where}.content' must be a string or an array.", f"{where}.content")
    return [_part(role, part, f"{where}.content[{i}]", native) for i, part in enumerate(content)]


def _text_part(kind: str, text: str) -> JSONObject:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": kind, "text": text}


def _part(role: str, part: object, where: str, native: _NativeOnly) -> JSONObject:
    if not isinstance(part, dict):
        raise fail(f"'{where}' must be an object.", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise fail(f"'{where}.text' must be a string.", f"{where}.text")
        return _text_part("output_text" if role == "assistant" else "input_text", part["text"])
    if kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind == "input_image" and role == "user" and part.get("file_id") is None:
        if not isinstance(part.get("image_url"), str):
            raise fail(f"'{where}.image_url' must be a URL.", f"{where}.image_url")
        return {"type": "input_image", "image_url": part["image_url"],
                "detail": part.get("detail") or "auto"}  # fmt: skip
    if role == "user" and isinstance(kind, str) and kind.startswith("input_"):
        # A file, an image by file_id (files live at OpenAI), ...
        native.note(f"{where}.file_id" if kind == "input_image" else f"{where}.type")
        return dict(part)
    raise fail(f"Content parts of type {kind!r} are not supported in a {role} message.",
               f"{where}.type")  # fmt: skip


def _tool_output(output: object, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(
        isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
        and isinstance(p.get("text"), str) for p in output
    ):  # fmt: skip
        return "".join(p["text"] for p in output)
    raise fail(f"'{where}' must be a string or an array of text parts.", where)


# --- items -> chat messages --------------------------------------------------------------


def to_messages(items: list[JSONObject]) -> list[JSONObject]:
    """Stored items -> chat messages: function calls join the assistant turn before
    them (one message with every parallel call), outputs become tool messages."""
    messages: list[JSONObject] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def _chat_message(item: JSONObject) -> JSONObject:
    role, parts = item["role"], item["content"]
    if role == "assistant":
        text = "".join(p.get("text") or p.get("refusal") or "" for p in parts)
        return {"role": "assistant", "content": text}
    # Parts only the Responses API itself reads (files) have no chat equivalent: such a
    # request is served natively (`native_only`); its chat form only estimates and plans.
    parts = [p for p in parts if p["type"] == "input_text" or "image_url" in p]
    if all(p["type"] == "input_text" for p in parts):  # images only come in user messages
        return {"role": role, "content": "\n\n".join(p["text"] for p in parts)}
    return {"role": "user", "content": [_chat_part(p) for p in parts]}


def _chat_part(part: JSONObject) -> JSONObject:
    if part["type"] == "input_text":
        return {"type": "text", "text": part["text"]}
    url = {"url": part["image_url"], "detail": part.get("detail") or "auto"}
    return {"type": "image_url", "image_url": url}
