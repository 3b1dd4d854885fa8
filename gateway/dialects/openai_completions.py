"""OpenAI's legacy completions (`POST /v1/completions`), served by chat deployments.

The prompt becomes one user message; `max_tokens`, `stop`, `temperature`, `top_p`,
`n`, `presence_penalty`, `frequency_penalty`, `seed`, `logit_bias`, `user` and
`stream_options` carry over as they are. What a chat model cannot do is refused with a
400 naming the param: `suffix` (insertion), `echo: true`, `best_of` above `n`,
`logprobs`, token-id prompts and more than one prompt in a list. Answers are
`text_completion` objects (and chunks), errors OpenAI's.
"""

from __future__ import annotations

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.dialects.openai_chat import (
    DONE_LINE,
    decode_object,
    encode_chunk,
    encode_error,
    parse_chat_body,
    reject_forbidden,
)
from gateway.errors import GatewayError, InvalidRequestError
from gateway.types import ChatRequest, JSONObject

# Carried over to the chat body unchanged (the chat checks validate them).
_CARRIED = (
    "max_tokens",
    "stop",
    "temperature",
    "top_p",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logit_bias",
    "user",
    "stream",
    "stream_options",
)
_KNOWN = frozenset({"model", "prompt", "suffix", "echo", "best_of", "logprobs", *_CARRIED})


class OpenAICompletions:
    name = "completions"

    def parse(self, raw: bytes, limits: RequestLimits) -> ChatRequest:
        body = decode_object(raw, limits.max_json_depth)
        reject_forbidden(body)
        unknown = sorted(set(body) - _KNOWN)
        if unknown:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {unknown[0]}.", param=unknown[0]
            )
        prompt = _prompt(body.get("prompt"))
        if body.get("suffix") is not None:
            raise InvalidRequestError(
                "'suffix' (text insertion) is not supported: the gateway serves completions "
                "with chat models.",
                param="suffix",
            )
        if body.get("echo") not in (None, False):
            raise InvalidRequestError("'echo' must be false: echoing the prompt is not "
                                      "supported.", param="echo")  # fmt: skip
        if body.get("logprobs") is not None:
            raise InvalidRequestError("'logprobs' is not supported on /v1/completions.",
                                      param="logprobs")  # fmt: skip
        best_of = body.get("best_of")
        if best_of is not None and best_of != body.get("n", 1):
            raise InvalidRequestError("'best_of' is not supported (other than equal to n).",
                                      param="best_of")  # fmt: skip
        chat: JSONObject = {k: body[k] for k in _CARRIED if k in body}
        chat["model"] = body.get("model")
        chat["messages"] = [{"role": "user", "content": prompt}]
        return parse_chat_body(chat, limits)

    def answer(self, completion: JSONObject, req: ChatRequest) -> bytes:
        return jsonutil.dumps(
            {
                **_envelope(completion),
                "choices": [_choice(c) for c in completion.get("choices") or ()],
                "usage": completion.get("usage"),
            }
        )

    def stream(self, req: ChatRequest) -> CompletionsEncoder:
        return CompletionsEncoder(req.include_usage)

    def error_body(self, error: GatewayError) -> JSONObject:
        return error.to_openai_body()


class CompletionsEncoder:
    __slots__ = ("_include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage

    def chunk(self, chunk: JSONObject) -> bytes:
        choices = []
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            finish = choice.get("finish_reason")
            if not text and finish is None:
                continue  # the role chunk, tool calls: nothing a completion carries
            choices.append(
                {
                    "text": text or "",
                    "index": choice.get("index", 0),
                    "logprobs": None,
                    "finish_reason": finish,
                }  # fmt: skip
            )
        if not choices:
            return b""
        return encode_chunk({**_envelope(chunk), "choices": choices})

    def end(self, usage_chunk: JSONObject | None) -> bytes:
        if usage_chunk is None or not self._include_usage:
            return DONE_LINE
        final = {**_envelope(usage_chunk), "choices": [], "usage": usage_chunk.get("usage")}
        return encode_chunk(final) + DONE_LINE

    def error(self, error: GatewayError) -> bytes:
        return encode_error(error.to_openai_body())


def _prompt(value: object) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list):
        raise InvalidRequestError(
            "'prompt' must be a string or a list of one string (batched prompts and token "
            "ids are not supported).",
            param="prompt",
        )
    if not isinstance(value, str) or not value:
        raise InvalidRequestError("'prompt' is required and must be a non-empty string.",
                                  param="prompt")  # fmt: skip
    return value


def _envelope(source: JSONObject) -> JSONObject:
    envelope: JSONObject = {
        "id": _completion_id(source.get("id")),
        "object": "text_completion",
        "created": source.get("created"),
        "model": source.get("model"),
    }
    if source.get("system_fingerprint") is not None:
        envelope["system_fingerprint"] = source["system_fingerprint"]
    return envelope


def _completion_id(chat_id: object) -> str:
    text = str(chat_id or "")
    return "cmpl-" + text.removeprefix("chatcmpl-") if text else "cmpl-gateway"


def _choice(choice: JSONObject) -> JSONObject:
    message = choice.get("message") or {}
    content = message.get("content")
    return {
        "text": content if isinstance(content, str) else "",
        "index": choice.get("index", 0),
        "logprobs": None,
        "finish_reason": _finish(choice.get("finish_reason")),
    }


def _finish(reason: object) -> str:
    """Completions know `stop`, `length` and `content_filter`; anything else a chat model
    ends with (`tool_calls`: no tools are sent from here) reads as `stop`."""
    return reason if reason in ("length", "content_filter") else "stop"


COMPLETIONS = OpenAICompletions()
