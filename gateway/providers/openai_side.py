"""The OpenAI side of the translators for providers with formats of their own
(`anthropic/`, `gemini/`): reading parts of an OpenAI chat request and shaping OpenAI
stream chunks, written once for all of them."""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import InvalidRequestError
from gateway.types import ChatResponse, JSONObject, Usage


class UnsupportedByProviderError(InvalidRequestError):
    """A parameter this deployment's API has no equivalent for."""

    code = "unsupported_parameter"


Unsupported = Callable[[str, str], UnsupportedByProviderError]


def unsupported_by(api: str) -> Unsupported:
    """The error factory of one provider's translator: (message, param) -> the error."""

    def unsupported(message: str, param: str) -> UnsupportedByProviderError:
        return UnsupportedByProviderError(f"{message} {api} deployments do not support it.", param)

    return unsupported


def part_text(part: JSONObject, where: str, unsupported: Unsupported) -> str | None:
    """The text of a `text` or `refusal` content part; None when it is blank (the APIs
    reject blank text). Any other part type is not usable where text is expected."""
    kind = part.get("type")
    text = part.get("text") if kind == "text" else part.get("refusal")
    if kind not in ("text", "refusal") or not isinstance(text, str):
        raise unsupported(f"Content part type {kind!r} is not usable in this message.", where)
    return text if text.strip() else None


def json_schema_of(fmt: JSONObject, api: str) -> JSONObject:
    """The schema of a `response_format` of type `json_schema` (a 400 without one)."""
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            f"response_format.json_schema.schema is required for {api} deployments.",
            param="response_format.json_schema.schema",
        )
    return schema


def chunk_envelope(completion_id: str, created_s: int, model: str) -> JSONObject:
    """What every chunk of one streamed completion repeats."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created_s,
        "model": model,
    }


def one_choice_completion(
    completion_id: object, created_s: int, model: object, message: JSONObject, finish: str,
    usage: Usage | None,
) -> ChatResponse:  # fmt: skip
    """A `chat.completion` with one choice (what a translated answer becomes)."""
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    body: JSONObject = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "choices": [choice],
    }
    if usage is not None:
        body["usage"] = usage.to_openai()
    return ChatResponse(body, usage)
