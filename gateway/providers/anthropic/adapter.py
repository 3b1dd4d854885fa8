"""Anthropic Messages API (`POST {base_url}/v1/messages`), translated to and from OpenAI chat.

Request (OpenAI -> Anthropic):
- auth is `x-api-key` plus `anthropic-version` (config `api_version`, default 2023-06-01);
  never `Authorization`.
- system/developer messages -> top-level `system`; `tool` messages -> user `tool_result`
  blocks; assistant `tool_calls` -> `tool_use` blocks; consecutive same-role turns are
  merged (the API wants alternation) with tool results first in their turn; a
  conversation that does not start with a user turn gets a "." user turn in front (the
  API rejects any other first role).
- images: data: URLs -> base64 sources, http(s) URLs -> url sources; PDF `file` parts
  with file_data -> document blocks.
- `max_tokens` is required by Anthropic: the request's, else 4096 (or the deployment's
  max_output_tokens when smaller). temperature above 1 (Anthropic's maximum) becomes 1;
  top_p is sent only without temperature (current models accept only one of them).
- `response_format` json_schema -> `output_config.format` (Anthropic structured outputs;
  models without it answer 400, which goes back as is). json_object, n > 1, logprobs and
  audio have no equivalent: 400 naming the parameter. OpenAI-only knobs with no effect
  on the answer's shape (seed, penalties, logit_bias, metadata, store, service_tier,
  reasoning_effort, ...) are dropped, since the API rejects fields it does not know.
Responses and streams (Anthropic -> OpenAI): see `anthropic_response`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from gateway.config import Deployment
from gateway.errors import (
    InvalidRequestError,
    ProviderError,
    UpstreamAuthError,
    UpstreamRejectedError,
)
from gateway.providers.anthropic.response import AnthropicStream, from_anthropic
from gateway.providers.base import BaseProvider, error_object, now_s, tool_call_arguments
from gateway.providers.openai_side import (
    UnsupportedByProviderError,
    json_schema_of,
    part_text,
    unsupported_by,
)
from gateway.transport import UpstreamRequest
from gateway.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
)

DEFAULT_API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
FIRST_TURN_PLACEHOLDER = "."  # the API requires the first message to be a user turn
_CONTEXT_HINTS = ("prompt is too long", "exceed context limit")
NATIVE_DIALECT = "messages"  # the client dialect whose body this provider sends as it is


class AnthropicProvider(BaseProvider):
    kind: ClassVar[str] = "anthropic"

    def messages_url(self) -> str:
        # Tolerate a configured base URL that already ends in /v1.
        base = self.base_url.removesuffix("/v1")
        return f"{base}/v1/messages"

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.config.api_version or DEFAULT_API_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def chat_request(self, req: ChatRequest, d: Deployment) -> UpstreamRequest:
        native = req.native
        if native is not None and native.dialect == NATIVE_DIALECT:
            headers = native_headers(self.auth_headers(), self.config.headers, native.headers)
            body = native_body(native.body, req.stream, d)
            return self.upstream_request(self.messages_url(), headers, body, native=True)
        return self.upstream_request(self.messages_url(), self.auth_headers(), to_anthropic(req, d))

    def chat_response(self, body: bytes, d: Deployment) -> ChatResponse:
        return from_anthropic(self.parse_json(body), now_s())

    def chat_stream(self, req: ChatRequest, d: Deployment) -> AnthropicStream:
        return AnthropicStream(now_s(), self.classify_error)

    def embeddings_request(self, req: EmbeddingRequest, d: Deployment) -> UpstreamRequest:
        raise UnsupportedByProviderError(
            "Anthropic has no embeddings API; route embeddings to another provider.",
            param="model",
        )

    def embeddings_response(self, body: bytes, d: Deployment) -> EmbeddingResponse:
        raise UnsupportedByProviderError("Anthropic has no embeddings API.", param="model")

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        if status == 402:  # billing_error: the gateway's account, not the client's request
            return UpstreamAuthError(
                "Upstream refused the gateway's account (HTTP 402, billing).", upstream_status=402
            )
        if status == 413:  # request_too_large is about bytes, not the context window
            message = self.redact(self.error_fields(body)[0]) or "The request is too large."
            return UpstreamRejectedError(message, upstream_status=413, code="request_too_large")
        return super().classify_error(status, body, headers)

    def error_fields(self, body: bytes) -> tuple[str, str, str | None, str | None]:
        """Anthropic's body is {"type": "error", "error": {"type", "message"}}."""
        message = str(error_object(body).get("message") or "")
        too_long = any(hint in message.lower() for hint in _CONTEXT_HINTS)
        return (
            message,
            "invalid_request_error",
            None,
            "context_length_exceeded" if too_long else None,
        )


# --- request: the client's own Messages body ---------------------------------------------


def native_body(body: JSONObject, stream: bool, d: Deployment) -> JSONObject:
    """The client's body as it came (cache_control, thinking and its signed blocks, top_k,
    beta fields: all of it), with the deployment's model, streamed as the request asks."""
    out = {**body, "model": d.model}
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return out


def native_headers(
    auth: dict[str, str], configured: Mapping[str, str], client: Mapping[str, str]
) -> dict[str, str]:
    """The provider's auth headers with the client's `anthropic-version` (when it sent
    one) and `anthropic-beta` (added to the provider's configured betas, if any). The
    client's other headers are never in `client` (gateway.api.chat.forwarded_headers)."""
    headers = dict(auth)
    version = client.get("anthropic-version")
    if version:
        headers["anthropic-version"] = version
    beta = client.get("anthropic-beta")
    if beta:
        keys = [k for k in configured if k.lower() == "anthropic-beta"]
        if not keys:
            headers["anthropic-beta"] = beta
            return headers
        values = [*(configured[k] for k in keys), beta]
        names = (t.strip() for v in values for t in v.split(","))
        merged = ",".join(dict.fromkeys(n for n in names if n))
        for key in keys:  # replaces the configured one, in its case
            headers[key] = merged
    return headers


# --- request: OpenAI -> Anthropic ------------------------------------------------------


def to_anthropic(req: ChatRequest, d: Deployment) -> JSONObject:
    body = req.body
    _reject_unsupported(body)
    system, messages = convert_messages(req.messages)
    out: JSONObject = {"model": d.model, "max_tokens": max_tokens(req, d), "messages": messages}
    if system is not None:
        out["system"] = system
    out.update(_sampling(body))
    out.update(_tools(body))
    out.update(_output_config(body.get("response_format")))
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if req.stream:
        out["stream"] = True
    return out


def max_tokens(req: ChatRequest, d: Deployment) -> int:
    if req.max_tokens is not None:
        return req.max_tokens
    if d.max_output_tokens is not None:
        return min(DEFAULT_MAX_TOKENS, d.max_output_tokens)
    return DEFAULT_MAX_TOKENS


_unsupported = unsupported_by("Anthropic")


def _reject_unsupported(body: JSONObject) -> None:
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise _unsupported("'n' greater than 1 asks for several choices.", "n")
    if body.get("logprobs") is True:
        raise _unsupported("'logprobs' asks for token log probabilities.", "logprobs")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or ()):
        raise _unsupported("Audio output was requested.", "audio")


def _sampling(body: JSONObject) -> JSONObject:
    out: JSONObject = {}
    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(temperature, 1)  # OpenAI allows 0..2, Anthropic 0..1
    elif body.get("top_p") is not None:
        # Current Claude models reject temperature together with top_p ("use only one").
        out["top_p"] = body["top_p"]
    if body.get("top_k") is not None:  # Anthropic's own knob, passed on when a client sends it
        out["top_k"] = body["top_k"]
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = list(stop)
    return out


def _tools(body: JSONObject) -> JSONObject:
    tools = body.get("tools")
    if not tools:
        return {}
    out: JSONObject = {"tools": [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]}
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool(tool: JSONObject, where: str) -> JSONObject:
    if tool.get("type", "function") != "function":
        raise _unsupported(f"Tool type {tool.get('type')!r} is not a function tool.", where)
    fn = tool["function"]
    out: JSONObject = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("strict") is True:
        out["strict"] = True  # Anthropic strict tool use
    return out


def _tool_choice(choice: object) -> JSONObject | None:
    if choice is None:
        return None
    simple = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"type": "tool", "name": fn["name"]}
    raise _unsupported(f"tool_choice {choice!r} has no Anthropic equivalent.", "tool_choice")


def _output_config(fmt: object) -> JSONObject:
    if not isinstance(fmt, dict) or fmt.get("type") == "text":
        return {}
    if fmt.get("type") == "json_schema":
        schema = json_schema_of(fmt, "Anthropic")
        return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    raise _unsupported(
        f"response_format type {fmt.get('type')!r} (use json_schema instead).", "response_format"
    )


# --- messages --------------------------------------------------------------------------


def convert_messages(
    messages: list[JSONObject],
) -> tuple[str | list[JSONObject] | None, list[JSONObject]]:
    """(system, messages) in Anthropic's shape: alternating turns, user first."""
    system: list[JSONObject] = []
    turns: list[JSONObject] = []
    for i, message in enumerate(messages):
        role, where = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise _unsupported(f"Role {role!r} is legacy function calling; use tools.", where)
        _append_turn(turns, str(role), blocks)
    for turn in turns:
        if turn["role"] == "user":  # the API wants tool_result blocks first in their turn
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [_text(FIRST_TURN_PLACEHOLDER)]})
    return _system(system), turns


def _append_turn(turns: list[JSONObject], role: str, blocks: list[JSONObject]) -> None:
    if not blocks:
        return  # empty content is rejected by the API; the turn adds nothing
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _system(blocks: list[JSONObject]) -> str | list[JSONObject] | None:
    if not blocks:
        return None
    if len(blocks) == 1 and "cache_control" not in blocks[0]:
        return str(blocks[0]["text"])
    return blocks


def _text(text: str, part: JSONObject | None = None) -> JSONObject:
    block: JSONObject = {"type": "text", "text": text}
    if part is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]  # Anthropic prompt caching, passed on
    return block


def _text_blocks(content: object, where: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [_text(content)] if content.strip() else []
    parts = content if isinstance(content, list) else ()
    blocks = [_text_part(part, f"{where}[{index}]") for index, part in enumerate(parts)]
    return [block for block in blocks if block is not None]


def _text_part(part: JSONObject, where: str) -> JSONObject | None:
    text = part_text(part, where, _unsupported)
    return _text(text, part) if text is not None else None


def _user_blocks(content: object, where: str) -> list[JSONObject]:
    if not isinstance(content, list):
        return _text_blocks(content, where)
    blocks = []
    for index, part in enumerate(content):
        kind, here = part.get("type"), f"{where}[{index}]"
        convert = _image if kind == "image_url" else _document if kind == "file" else _text_part
        block = convert(part, here)
        if block is not None:
            blocks.append(block)
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, _, data = url.removeprefix("data:").partition(",")
    media_type, *params = header.split(";")
    if "base64" not in params or not data:
        raise InvalidRequestError(f"{where} must be a base64 data: URL.", param=where)
    return media_type, data


def _image(part: JSONObject, where: str) -> JSONObject:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    here = f"{where}.image_url.url"
    if isinstance(url, str) and url.startswith("data:"):
        media_type, data = _data_url(url, here)
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequestError(f"{here} must be a data: or http(s) URL.", param=here)
    block: JSONObject = {"type": "image", "source": source}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _document(part: JSONObject, where: str) -> JSONObject:
    file = part.get("file")
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise _unsupported("Only inline file_data (a base64 data: URL) is usable here.", where)
    media_type, data = _data_url(data_url, f"{where}.file.file_data")
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _assistant_blocks(message: JSONObject, where: str) -> list[JSONObject]:
    blocks = _text_blocks(message.get("content"), f"{where}.content")
    for index, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{index}]"))
    return blocks


def _tool_use(call: object, where: str) -> JSONObject:
    call, fn, arguments = tool_call_arguments(call, where)
    return {"type": "tool_use", "id": call["id"], "name": fn.get("name"), "input": arguments}


def _tool_result(message: JSONObject, where: str) -> JSONObject:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(f"{where}.tool_call_id is required.", f"{where}.tool_call_id")
    block: JSONObject = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _text_blocks(content, f"{where}.content")
        if parts:
            block["content"] = parts
    return block


__all__ = ["AnthropicProvider", "AnthropicStream", "UnsupportedByProviderError"]
