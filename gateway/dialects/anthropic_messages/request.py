"""An Anthropic Messages request -> the internal chat body (then every chat check).

- `system` (a string or text blocks) -> one system message (blocks joined by a blank
  line); `messages` -> user and assistant messages.
- user blocks: text; image (base64 -> a data: URL, url -> the URL); document (base64
  PDF -> a `file` part with file_data, a text source or content blocks -> text);
  tool_result -> a `tool` message (text content; its images go to a user message
  right after the tool messages; `is_error` is dropped).
- assistant blocks: text (joined), tool_use -> `tool_calls` (arguments = the input as
  JSON); thinking and redacted_thinking are dropped (no upstream of the internal format
  takes them back).
- tools (custom tools: name, description, input_schema) -> function tools;
  tool_choice auto/any/tool/none -> auto/required/named/none,
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`; server and
  Anthropic-defined tools (web_search, bash, text_editor, computer, ...) are a 400.
- stop_sequences -> stop, temperature, top_p, metadata.user_id -> user, stream;
  output_config.format (or the beta output_format) json_schema -> response_format.
- Dropped: top_k, thinking, cache_control (everywhere), service_tier,
  output_config.effort, and fields this dialect does not know (after a type check of
  the ones it does).

Errors are 400s whose message starts with the dotted path of the field, as Anthropic's.
"""

from __future__ import annotations

from gateway import jsonutil
from gateway.errors import InvalidRequestError
from gateway.types import JSONObject

SYSTEM_SEPARATOR = "\n\n"
DEFAULT_DOCUMENT_NAME = "document.pdf"
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_THINKING_TYPES = ("enabled", "disabled", "adaptive")


def bad(where: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{where}: {message}", param=where)


def unsupported(where: str, what: str) -> InvalidRequestError:
    return bad(where, f"{what} is not supported by this gateway (it serves the Messages API "
                      "with any provider's models).")  # fmt: skip


def to_chat_body(body: JSONObject, counting: bool = False) -> JSONObject:
    """The internal chat body of a Messages request (`counting`: a count_tokens body,
    which has no max_tokens)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "Field required" if model is None else "Input should be a string")
    chat: JSONObject = {"model": model}
    if not counting or body.get("max_tokens") is not None:
        chat["max_tokens"] = _max_tokens(body.get("max_tokens"))
    messages = _system(body.get("system"))
    messages += _messages(body.get("messages"))
    chat["messages"] = messages
    chat.update(_sampling(body))
    chat.update(_tools(body.get("tools"), body.get("tool_choice")))
    chat.update(_output_format(body))
    _check_thinking(body.get("thinking"))
    user = _user_id(body.get("metadata"))
    if user:
        chat["user"] = user
    if not counting and body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise bad("stream", "Input should be a valid boolean")
        chat["stream"] = body["stream"]
    return chat


def _max_tokens(value: object) -> int:
    if value is None:
        raise bad("max_tokens", "Field required")
    if not _is_int(value):
        raise bad("max_tokens", "Input should be a valid integer")
    assert isinstance(value, int)
    if value < 1:
        raise bad("max_tokens", "Input should be greater than or equal to 1")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sampling(body: JSONObject) -> JSONObject:
    out: JSONObject = {}
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= 1:
            raise bad(name, "Input should be a number between 0 and 1")
        out[name] = value
    top_k = body.get("top_k")  # checked, then dropped: OpenAI-compatible APIs reject it
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise bad("top_k", "Input should be an integer greater than or equal to 0")
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad("stop_sequences", "Input should be a valid list of strings")
        if stop:
            out["stop"] = list(stop)
    return out


def _user_id(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad("metadata", "Input should be a valid dictionary")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise bad("metadata.user_id", "Input should be a valid string")
    return user


def _check_thinking(thinking: object) -> None:
    """Checked like Anthropic's API does, then dropped: the internal format has no
    thinking budget every upstream takes."""
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in _THINKING_TYPES:
        raise bad("thinking.type", "Input should be 'enabled', 'disabled' or 'adaptive'")
    if thinking["type"] == "enabled" and not _is_int(thinking.get("budget_tokens")):
        raise bad("thinking.budget_tokens", "Field required (an integer)")


def thinks(body: JSONObject) -> bool:
    """The request turns extended thinking on (its answer has thinking blocks whose
    signatures the next turn must send back: a translated replay would lose them)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _output_format(body: JSONObject) -> JSONObject:
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise bad("output_config", "Input should be a valid dictionary")
    where = "output_config.format"
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None and body.get("output_format") is not None:
        where, fmt = "output_format", body["output_format"]
    if fmt is None:
        return {}
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise bad(f"{where}.type", "Input should be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise bad(f"{where}.schema", "Field required (an object)")
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "output", "schema": schema}}}  # fmt: skip


# --- system and messages ---------------------------------------------------------------


def _system(system: object) -> list[JSONObject]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise bad("system", "Input should be a string or a list of text blocks")
    texts = []
    for index, block in enumerate(system):
        where = f"system.{index}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad(f"{where}.type", "Input should be 'text'")
        texts.append(_text_of(block, where))
    text = SYSTEM_SEPARATOR.join(t for t in texts if t)
    return [{"role": "system", "content": text}] if text else []


def _messages(value: object) -> list[JSONObject]:
    if value is None:
        raise bad("messages", "Field required")
    if not isinstance(value, list):
        raise bad("messages", "Input should be a valid list")
    if not value:
        raise bad("messages", "At least one message is required")
    out: list[JSONObject] = []
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise bad(where, "Input should be a valid dictionary")
        role, content = message.get("role"), message.get("content")
        if content is None:
            raise bad(f"{where}.content", "Field required")
        if role == "user":
            out += _user(content, where)
        elif role == "assistant":
            out += _assistant(content, where)
        else:
            raise bad(f"{where}.role", f"Input should be 'user' or 'assistant', got {role!r}")
    return out


def _blocks(content: object, where: str) -> list[tuple[str, JSONObject, str]]:
    """(path, block, type) of a content list."""
    if not isinstance(content, list):
        raise bad(f"{where}.content", "Input should be a string or a list of content blocks")
    out = []
    for index, block in enumerate(content):
        here = f"{where}.content.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            raise bad(f"{here}.type", "Field required")
        out.append((here, block, kind))
    return out


def _text_of(block: JSONObject, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad(f"{where}.text", "Input should be a valid string")
    return text


def _user(content: object, where: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[JSONObject] = []
    parts: list[JSONObject] = []
    for here, block, kind in _blocks(content, where):
        if kind == "tool_result":
            message, images = _tool_result(block, here)
            tools.append(message)
            parts += images
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise bad(f"{here}.type", f"'{kind}' blocks belong in assistant messages")
        else:
            parts += _user_part(block, kind, here)
    if parts:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        tools.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return tools


def _user_part(block: JSONObject, kind: str, where: str) -> list[JSONObject]:
    if kind == "text":
        return [{"type": "text", "text": _text_of(block, where)}]
    if kind == "image":
        return [_image(block, where)]
    if kind == "document":
        return _document(block, where)
    raise unsupported(f"{where}.type", f"A {kind!r} block")


def _source(block: JSONObject, where: str) -> JSONObject:
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise bad(f"{where}.source", "Field required (an object with a type)")
    return source


def _base64_url(source: JSONObject, where: str) -> str:
    media_type, data = source.get("media_type"), source.get("data")
    if not isinstance(media_type, str) or not isinstance(data, str):
        raise bad(f"{where}.source", "a base64 source needs media_type and data strings")
    return f"data:{media_type};base64,{data}"


def _image(block: JSONObject, where: str) -> JSONObject:
    source = _source(block, where)
    if source["type"] == "base64":
        url = _base64_url(source, where)
    elif source["type"] == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise unsupported(f"{where}.source.type", f"An image source of type {source['type']!r}")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: JSONObject, where: str) -> list[JSONObject]:
    source = _source(block, where)
    kind = source["type"]
    if kind == "base64":
        title = block.get("title")
        name = title if isinstance(title, str) and title else DEFAULT_DOCUMENT_NAME
        file = {"filename": name, "file_data": _base64_url(source, where)}
        return [{"type": "file", "file": file}]
    if kind == "text":
        return [{"type": "text", "text": _text_of({"text": source.get("data")}, f"{where}.source")}]
    if kind == "content":
        parts = _blocks(source.get("content"), f"{where}.source")
        return [p for here, b, k in parts for p in _user_part(b, k, here)]
    raise unsupported(f"{where}.source.type", f"A document source of type {kind!r}")


def _tool_result(block: JSONObject, where: str) -> tuple[JSONObject, list[JSONObject]]:
    """The tool message, and the images of its content (for the user message after)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.tool_use_id", "Field required")
    content = block.get("content")
    texts: list[str] = []
    images: list[JSONObject] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for here, part, kind in _blocks(content, where):
            if kind == "image":
                images.append(_image(part, here))
            else:
                texts += [p["text"] for p in _user_part(part, kind, here) if p["type"] == "text"]
    message = {"role": "tool", "tool_call_id": call_id, "content": "\n".join(texts)}
    return message, images


def _assistant(content: object, where: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[JSONObject] = []
    for here, block, kind in _blocks(content, where):
        if kind == "text":
            texts.append(_text_of(block, here))
        elif kind == "tool_use":
            calls.append(_tool_call(block, here))
        elif kind not in ("thinking", "redacted_thinking"):
            raise unsupported(f"{here}.type", f"A {kind!r} block")
    text = SYSTEM_SEPARATOR.join(t for t in texts if t)
    if not text and not calls:
        return []  # only thinking: nothing an upstream of the internal format takes
    message: JSONObject = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: JSONObject, where: str) -> JSONObject:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.id", "Field required")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "Field required")
    if not isinstance(arguments, dict):
        raise bad(f"{where}.input", "Input should be a valid dictionary")
    fn = {"name": name, "arguments": jsonutil.dumps(arguments).decode()}
    return {"id": call_id, "type": "function", "function": fn}


# --- tools -----------------------------------------------------------------------------


def _tools(tools: object, choice: object) -> JSONObject:
    if tools is None:
        _tool_choice(choice, set())  # checked; without tools there is nothing to choose
        return {}
    if not isinstance(tools, list):
        raise bad("tools", "Input should be a valid list")
    out: JSONObject = {"tools": [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]}
    if not out["tools"]:
        return {}
    names = {tool["function"]["name"] for tool in out["tools"]}
    out.update(_tool_choice(choice, names))
    return out


def _tool(tool: object, where: str) -> JSONObject:
    if not isinstance(tool, dict):
        raise bad(where, "Input should be a valid dictionary")
    if tool.get("type") not in (None, "custom"):
        raise unsupported(f"{where}.type", f"The tool type {tool.get('type')!r} (server and "
                                           "Anthropic-defined tools)")  # fmt: skip
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "Field required")
    if not isinstance(schema, dict):
        raise bad(f"{where}.input_schema", "Field required (an object)")
    fn: JSONObject = {"name": name, "parameters": schema}
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise bad(f"{where}.description", "Input should be a valid string")
    if description:
        fn["description"] = description
    return {"type": "function", "function": fn}


def _tool_choice(choice: object, names: set[str]) -> JSONObject:
    if choice is None:
        return {}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or kind not in ("auto", "any", "tool", "none"):
        raise bad("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if not names:
        return {}
    out: JSONObject = {}
    if kind == "tool":
        name = choice.get("name")
        if name not in names:
            raise bad("tool_choice.name", f"No tool named {name!r} in tools")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        out["tool_choice"] = _TOOL_CHOICES[kind]
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out
