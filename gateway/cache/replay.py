"""Convert between a finished chat stream and one `chat.completion`, both ways.

- `assemble(chunks)` (or `Assembler`, chunk by chunk): a stream's chunks (usage chunk
  included) -> one chat.completion to store; None when any choice never finished
  (never store a partial answer).
- `replay(completion, encoder)`: the same chunks as another dialect's stream.
- `to_sse(completion, include_usage)`: a stored chat.completion -> the SSE bytes of a
  correct stream: per choice a role chunk, a content (and refusal, logprobs) chunk,
  one chunk with every tool call whole, a finish chunk; then the usage chunk only when
  the client asked for it (`stream_options.include_usage`); then `[DONE]`. One chunk
  per part is what the SDKs accumulate; splitting the text would only add bytes.
"""

from __future__ import annotations

from typing import Any

from gateway.dialects import DONE_LINE, StreamEncoder, encode_chunk
from gateway.types import JSONObject

_ENVELOPE_EXTRAS = ("system_fingerprint", "service_tier")


def replay(completion: JSONObject, encoder: StreamEncoder) -> bytes:
    """A stored chat.completion as a stream in another dialect: the chunks `to_sse`
    sends, then the usage chunk, through `encoder`."""
    envelope = _envelope(completion, "chat.completion.chunk")
    parts = [
        encoder.chunk({**envelope, "choices": [delta]})
        for choice in completion.get("choices") or ()
        for delta in _choice_deltas(choice)
    ]
    usage = completion.get("usage")
    parts.append(
        encoder.end(None if usage is None else {**envelope, "choices": [], "usage": usage})
    )
    return b"".join(parts)


def to_sse(completion: JSONObject, include_usage: bool) -> bytes:
    envelope = _envelope(completion, "chat.completion.chunk")
    if include_usage:
        envelope["usage"] = None  # as OpenAI does on every chunk before the usage chunk
    parts = [
        encode_chunk({**envelope, "choices": [delta]})
        for choice in completion.get("choices") or ()
        for delta in _choice_deltas(choice)
    ]
    usage = completion.get("usage")
    if include_usage and usage is not None:
        parts.append(encode_chunk({**envelope, "choices": [], "usage": usage}))
    parts.append(DONE_LINE)
    return b"".join(parts)


def _envelope(source: JSONObject, kind: str) -> JSONObject:
    out: JSONObject = {
        "id": source.get("id"),
        "object": kind,
        "created": source.get("created"),
        "model": source.get("model"),
    }
    for name in _ENVELOPE_EXTRAS:
        if source.get(name) is not None:
            out[name] = source[name]
    return out


def _choice_deltas(choice: JSONObject) -> list[JSONObject]:
    index = choice.get("index", 0)
    message = choice.get("message") or {}
    content = message.get("content")

    def delta(fields: JSONObject, logprobs: Any = None, finish: Any = None) -> JSONObject:
        return {"index": index, "delta": fields, "logprobs": logprobs, "finish_reason": finish}

    role = {"role": message.get("role") or "assistant", "content": "" if content else content}
    out = [delta(role)]
    body: JSONObject = {}
    if isinstance(content, str) and content:
        body["content"] = content
    if message.get("refusal"):
        body["refusal"] = message["refusal"]
    if body or choice.get("logprobs"):
        out.append(delta(body, choice.get("logprobs")))
    calls = message.get("tool_calls")
    if calls:
        out.append(delta({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
    if message.get("function_call"):
        out.append(delta({"function_call": message["function_call"]}))
    out.append(delta({}, finish=choice.get("finish_reason")))
    return out


def assemble(chunks: list[JSONObject]) -> JSONObject | None:
    """One chat.completion from a complete stream's chunks; None if it is not complete."""
    assembler = Assembler()
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.result()


class Assembler:
    """`assemble`, one chunk at a time, as a stream passes: it keeps the first chunk (the
    envelope) and each choice's text parts, not every chunk (a thousand streams being
    cached would otherwise hold every parsed chunk of each until its end)."""

    __slots__ = ("_builders", "_first", "_usage")

    def __init__(self) -> None:
        self._first: JSONObject | None = None
        self._builders: dict[int, _ChoiceBuilder] = {}
        self._usage: Any = None

    def feed(self, chunk: JSONObject) -> None:
        if self._first is None:
            self._first = chunk
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            builder = self._builders.get(index)
            if builder is None:
                builder = self._builders[index] = _ChoiceBuilder(index)
            builder.feed(choice)

    def result(self) -> JSONObject | None:
        builders = self._builders
        if self._first is None or not builders:
            return None
        if any(b.finish_reason is None for b in builders.values()):
            return None
        out = _envelope(self._first, "chat.completion")
        out["choices"] = [builders[i].build() for i in sorted(builders)]
        if self._usage is not None:
            out["usage"] = self._usage
        return out


class _ChoiceBuilder:
    """Accumulates one choice's deltas; string parts are joined once at the end (O(n))."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, _ToolCallBuilder] = {}
        self.function_call: _ToolCallBuilder | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None

    def feed(self, choice: JSONObject) -> None:
        delta = choice.get("delta") or {}
        self.role = self.role or delta.get("role")
        if isinstance(delta.get("content"), str):
            self.content = _append(self.content, delta["content"])
        if isinstance(delta.get("refusal"), str):
            self.refusal = _append(self.refusal, delta["refusal"])
        for call in delta.get("tool_calls") or ():
            index = call.get("index", 0)
            self.tool_calls.setdefault(index, _ToolCallBuilder()).feed(call)
        if delta.get("function_call"):
            self.function_call = self.function_call or _ToolCallBuilder()
            self.function_call.feed({"function": delta["function_call"]})
        self._feed_logprobs(choice.get("logprobs"))
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def _feed_logprobs(self, logprobs: Any) -> None:
        if not isinstance(logprobs, dict):
            return
        if self.logprobs is None:
            self.logprobs = {}
        for name in ("content", "refusal"):
            if isinstance(logprobs.get(name), list):
                self.logprobs.setdefault(name, []).extend(logprobs[name])

    def build(self) -> JSONObject:
        text = "".join(self.content) if self.content is not None else None
        calls = [self.tool_calls[i].build() for i in sorted(self.tool_calls)]
        message: JSONObject = {
            "role": self.role or "assistant",
            "content": text,
            "refusal": "".join(self.refusal) if self.refusal is not None else None,
        }
        if calls:
            message["tool_calls"] = calls
        if self.function_call is not None:
            message["function_call"] = self.function_call.build()["function"]
        logprobs = None
        if self.logprobs is not None:
            logprobs = {"content": None, "refusal": None, **self.logprobs}
        return {
            "index": self.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }


def _append(parts: list[str] | None, text: str) -> list[str]:
    if parts is None:
        return [text]
    parts.append(text)
    return parts


class _ToolCallBuilder:
    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name: list[str] = []
        self.arguments: list[str] = []

    def feed(self, call: JSONObject) -> None:
        self.id = self.id or call.get("id")
        self.type = self.type or call.get("type")
        function = call.get("function") or {}
        if isinstance(function.get("name"), str):
            self.name.append(function["name"])
        if isinstance(function.get("arguments"), str):
            self.arguments.append(function["arguments"])

    def build(self) -> JSONObject:
        out: JSONObject = {
            "type": self.type or "function",
            "function": {"name": "".join(self.name), "arguments": "".join(self.arguments)},
        }
        if self.id is not None:
            out = {"id": self.id, **out}
        return out
