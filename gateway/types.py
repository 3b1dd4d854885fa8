"""Normalized request/response types at the seam between the pipeline and the providers.

The internal shape is OpenAI's wire shape (what clients send and receive), held in
typed wrappers so adapters only translate out and back. Request bodies are kept as
dicts after validation so that parameters an OpenAI-compatible upstream understands
pass through untouched (unlike an allow-list, which drops what it does not know).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

JSONObject = dict[str, Any]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # included in prompt_tokens (OpenAI convention)
    cache_write_tokens: int = 0  # included in prompt_tokens (Anthropic cache creation)
    reasoning_tokens: int = 0  # included in completion_tokens
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> JSONObject:
        out: JSONObject = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out

    @classmethod
    def from_openai(cls, data: object) -> Usage | None:
        if not isinstance(data, dict):
            return None
        prompt_details = data.get("prompt_tokens_details") or {}
        completion_details = data.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=_int(data.get("prompt_tokens")),
            completion_tokens=_int(data.get("completion_tokens")),
            cached_tokens=_int(prompt_details.get("cached_tokens")),
            reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class NativeBody:
    """A dialect's request as the client sent it, for a provider that speaks that dialect
    itself (the anthropic provider, `messages`): it sends this body instead of
    translating the chat body, so nothing is lost on the way. Every other provider
    ignores it and uses the chat body.

    `headers`: the client's headers named in `forward` (lower-case), their values
    checked (gateway.api.chat); never any other client header."""

    dialect: str
    body: JSONObject
    forward: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    # False: a translated replay of the answer would lose what the client needs (e.g.
    # thinking blocks and their signatures): the answer is neither cached nor shared.
    cacheable: bool = True
    # Capabilities only a deployment that takes this body natively has (a Responses body
    # with built-in tools needs `responses_api`): the others are not eligible.
    requires: frozenset[str] = frozenset()
    requires_param: str | None = None  # the client's param that needs them (for the 400)


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request. `body` is what the client sent, minus nothing."""

    model: str
    messages: list[JSONObject]
    body: JSONObject
    stream: bool = False
    include_usage: bool = False  # the client asked for the final usage chunk
    max_tokens: int | None = None  # max_tokens or max_completion_tokens
    native: NativeBody | None = None  # the dialect's own body (see NativeBody)
    # prompt_chars(), counted once: planning, admission and accounting each ask for it.
    _prompt_chars: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools"))

    @property
    def has_images(self) -> bool:
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, list) and _has_image(content):
                return True
        return False

    @property
    def wants_json_schema(self) -> bool:
        fmt = self.body.get("response_format")
        return isinstance(fmt, dict) and fmt.get("type") == "json_schema"

    def required_capabilities(self) -> frozenset[str]:
        needs = _CAPABILITY_SETS[
            (self.has_tools, self.has_images, self.wants_json_schema, self.stream)
        ]
        if not _PARAMETER_KEYS.isdisjoint(self.body):  # rarely: no allocation otherwise
            needs = needs | _parameters_needed(self.body)
        if self.native is not None and self.native.requires:
            needs = needs | self.native.requires
        return needs

    def prompt_chars(self) -> int:
        """Characters of text in the prompt, for the cheap token estimate."""
        if self._prompt_chars is None:
            self._prompt_chars = self._count_prompt_chars()
        return self._prompt_chars

    def _count_prompt_chars(self) -> int:
        total = 0
        for message in self.messages:
            total += _text_chars(message.get("content"))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    fn = call.get("function") or {}
                    total += len(str(fn.get("arguments", ""))) + len(str(fn.get("name", "")))
        for tool in self.body.get("tools") or ():
            total += len(str(tool))
        return total


# Every combination of (tools, vision, json_schema, stream), built once.
_CAPABILITY_SETS: dict[tuple[bool, ...], frozenset[str]] = {
    flags: frozenset(
        name
        for name, on in zip(("tools", "vision", "json_schema", "stream"), flags, strict=True)
        if on
    )
    for flags in itertools.product((False, True), repeat=4)
}


_PARAMETER_KEYS = frozenset(
    {"n", "logprobs", "top_logprobs", "audio", "modalities", "prediction", "logit_bias", "seed"}
)


def _parameters_needed(body: JSONObject) -> frozenset[str]:
    """The parameter capabilities (routers.PARAMETER_CAPABILITIES) a body asks for."""
    needed = set()
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        needed.add("n")
    if body.get("logprobs") is True or body.get("top_logprobs") is not None:
        needed.add("logprobs")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or ()):
        needed.add("audio")
    for name in ("prediction", "seed"):
        if body.get(name) is not None:
            needed.add(name)
    if body.get("logit_bias"):
        needed.add("logit_bias")
    return frozenset(needed)


def _has_image(content: list[Any]) -> bool:
    return any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)


def _text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(text)
            for p in content
            if isinstance(p, dict) and isinstance(text := p.get("text", ""), str)
        )
    return 0


@dataclass(slots=True)
class ChatResponse:
    """An OpenAI `chat.completion` object plus the usage read from it. `native`: the
    upstream's answer bytes as received, when the request was sent in its dialect's own
    format (`ChatRequest.native`); the client's dialect sends them as they are."""

    body: JSONObject
    usage: Usage | None = None
    native: bytes | None = None


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str] | list[list[int]]
    body: JSONObject


@dataclass(slots=True)
class EmbeddingResponse:
    body: JSONObject
    usage: Usage | None = None


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str | None = None


@dataclass(slots=True)
class StreamResult:
    """What a finished stream produced, for accounting."""

    usage: Usage | None = None
    finish_reason: str | None = None
    completion_chars: int = 0
    chunks: list[JSONObject] = field(default_factory=list)
