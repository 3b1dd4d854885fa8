"""What the translators of named-event streams share (Anthropic's Messages stream, OpenAI's
Responses stream): each event dispatched by its type to a handler of the subclass, and
the chunks made with one envelope (the id and model the first event names)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from gateway.errors import ProviderError
from gateway.providers.base import stream_event_json
from gateway.providers.openai_side import chunk_envelope
from gateway.types import JSONObject, SSEEvent, Usage

Classifier = Callable[[int, bytes, Mapping[str, str]], ProviderError]


class EventStream:
    """Per-stream state: the chunks' id, model and time; usage; whether it ended. A
    subclass sets `handlers` (event type -> handler) after its definition."""

    __slots__ = ("_classify", "_created_s", "_id", "_model", "done", "usage")
    handlers: ClassVar[Mapping[str, Callable[[Any, JSONObject], list[JSONObject]]]] = {}

    def __init__(self, created_s: int, classify: Classifier) -> None:
        self._classify = classify
        self._created_s = created_s
        self._id = ""
        self._model = ""
        self.usage: Usage | None = None
        self.done = False

    def feed(self, event: SSEEvent) -> list[JSONObject]:
        data = stream_event_json(event)
        handler = self.handlers.get(str(data.get("type") or event.event))
        return handler(self, data) if handler is not None else []

    def usage_chunk(self) -> JSONObject | None:
        if self.usage is None:
            return None
        return {**self._envelope(), "choices": [], "usage": self.usage.to_openai()}

    def _envelope(self) -> JSONObject:
        return chunk_envelope(self._id, self._created_s, self._model)

    def _chunk(self, delta: JSONObject, finish: str | None = None) -> JSONObject:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._envelope(), "choices": [choice]}
