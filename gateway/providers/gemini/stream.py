"""Gemini -> OpenAI: a `GenerateContentResponse` becomes a `chat.completion`, a
`streamGenerateContent?alt=sse` stream becomes `chat.completion.chunk`s, and embedding
answers become an OpenAI embedding list.

Response: each candidate is a choice; its text parts are joined into `message.content`
(thought parts left out), its `functionCall` parts become `tool_calls` with ids
`call_<responseId>_<n>` (stable for one answer, unique across turns) and the args as a
JSON string; a `thoughtSignature` rides along as
`tool_calls[].extra_content.google.thought_signature` (Google's OpenAI-compatibility
convention) so it can be sent back. finishReason becomes finish_reason (FINISH_REASONS,
`tool_calls` when the candidate called a function); a prompt blocked before any
candidate (`promptFeedback.blockReason`) is a `content_filter` answer, not an error.
Usage: prompt = promptTokenCount (+ toolUsePromptTokenCount), completion =
candidatesTokenCount + thoughtsTokenCount (also reported as reasoning_tokens), cached =
cachedContentTokenCount (already inside promptTokenCount, as in OpenAI).

A stream is a sequence of `data:` events, each a whole GenerateContentResponse, with no
terminator: the first event opens each choice with a role chunk, text parts become
content chunks, a function call arrives whole and becomes one tool-call chunk (index,
id, name, full arguments), and the stream is done once every candidate has a
finishReason (the same event carries the final usageMetadata). An `error` event raises
the matching ProviderError.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from gateway import jsonutil
from gateway.errors import UpstreamUnavailableError
from gateway.providers.base import error_object, stream_event_json
from gateway.providers.event_stream import Classifier
from gateway.providers.openai_side import chunk_envelope
from gateway.types import ChatResponse, EmbeddingResponse, JSONObject, SSEEvent, Usage

FILTERED = "content_filter"
# Gemini finishReason -> OpenAI finish_reason; anything else (OTHER, LANGUAGE,
# MALFORMED_FUNCTION_CALL, future values) ends the answer as a plain stop.
FINISH_REASONS: Mapping[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": FILTERED,
    "RECITATION": FILTERED,
    "BLOCKLIST": FILTERED,
    "PROHIBITED_CONTENT": FILTERED,
    "SPII": FILTERED,
    "IMAGE_SAFETY": FILTERED,
    "IMAGE_PROHIBITED_CONTENT": FILTERED,
    "IMAGE_RECITATION": FILTERED,
}


def finish_reason(reason: object, called_tools: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called_tools and mapped == "stop" else mapped


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from_gemini(meta: object) -> Usage | None:
    """None until the metadata carries token counts (early stream events may not)."""
    if not isinstance(meta, dict) or "promptTokenCount" not in meta:
        return None
    thoughts = _count(meta.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=_count(meta.get("promptTokenCount"))
        + _count(meta.get("toolUsePromptTokenCount")),
        completion_tokens=_count(meta.get("candidatesTokenCount")) + thoughts,
        cached_tokens=_count(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def google_error(body: bytes) -> JSONObject:
    """The `error` object of a Google error body (also inside a one-element array)."""
    return error_object(body)


def _response_token(data: JSONObject) -> str:
    rid = data.get("responseId")
    return rid if isinstance(rid, str) and rid else uuid.uuid4().hex[:16]


def _tool_call(call: JSONObject, signature: object, call_id: str) -> JSONObject:
    out: JSONObject = {
        "id": call_id,
        "type": "function",
        "function": {
            "name": call.get("name"),
            "arguments": jsonutil.dumps(call.get("args") or {}).decode(),
        },
    }
    if isinstance(signature, str) and signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def _parts(candidate: JSONObject) -> list[JSONObject]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _split(parts: list[JSONObject]) -> tuple[str, list[tuple[JSONObject, object]]]:
    """(answer text, [(functionCall, thoughtSignature)]) of one candidate's parts."""
    texts: list[str] = []
    calls: list[tuple[JSONObject, object]] = []
    for part in parts:
        if isinstance(part.get("functionCall"), dict):
            calls.append((part["functionCall"], part.get("thoughtSignature")))
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return "".join(texts), calls


def _blocked(data: JSONObject) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


# --- non-streaming ---------------------------------------------------------------------


def from_gemini(data: JSONObject, model: str, created_s: int) -> ChatResponse:
    token = _response_token(data)
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates:
        choices = [
            _choice(c, position, token)
            for position, c in enumerate(candidates)
            if isinstance(c, dict)
        ]
    elif _blocked(data):
        choices = [_choice({"finishReason": "SAFETY"}, 0, token)]
    else:
        raise UpstreamUnavailableError("The upstream returned an answer without candidates.")
    body: JSONObject = {
        "id": f"chatcmpl-{token}",
        "object": "chat.completion",
        "created": created_s,
        "model": data.get("modelVersion") or model,
        "choices": choices,
    }
    usage = usage_from_gemini(data.get("usageMetadata"))
    if usage is not None:
        body["usage"] = usage.to_openai()
    return ChatResponse(body, usage)


def _choice(candidate: JSONObject, position: int, token: str) -> JSONObject:
    text, calls = _split(_parts(candidate))
    tool_calls = [
        _tool_call(call, signature, f"call_{token}_{n}")
        for n, (call, signature) in enumerate(calls)
    ]
    message: JSONObject = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,  # null beside tool calls
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    index = candidate.get("index")
    return {
        "index": index if isinstance(index, int) else position,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(candidate.get("finishReason"), bool(tool_calls)),
    }


# --- embeddings ------------------------------------------------------------------------


def embeddings_from_gemini(data: JSONObject, model: str) -> EmbeddingResponse:
    single = data.get("embedding")
    items = [single] if isinstance(single, dict) else data.get("embeddings")
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("values"), list) for item in items
    ):
        raise UpstreamUnavailableError("The upstream returned an answer without embeddings.")
    embeddings = [
        {"object": "embedding", "index": index, "embedding": item["values"]}
        for index, item in enumerate(items)
    ]
    # Gemini reports no token usage for embeddings: the gateway estimates (and marks) it.
    return EmbeddingResponse({"object": "list", "data": embeddings, "model": model}, None)


# --- streaming -------------------------------------------------------------------------


class GeminiStream:
    """Per-stream state: ids, which choices are open or finished, tool-call numbering."""

    __slots__ = (
        "_calls",
        "_classify",
        "_created_s",
        "_expected",
        "_finished",
        "_id",
        "_model",
        "_token",
        "done",
        "usage",
    )

    def __init__(
        self, model: str, created_s: int, classify: Classifier, candidates: int = 1
    ) -> None:
        self._classify = classify
        self._created_s = created_s
        self._model = model
        self._expected = candidates
        self._token = ""
        self._id = ""
        self._calls: dict[int, int] = {}  # choice index -> tool calls so far (opened choices)
        self._finished: set[int] = set()
        self.usage: Usage | None = None
        self.done = False

    def feed(self, event: SSEEvent) -> list[JSONObject]:
        data = stream_event_json(event)
        if "error" in data:
            error = data["error"] if isinstance(data["error"], dict) else {}
            raise self._classify(_count(error.get("code")) or 500, jsonutil.dumps(data), {})
        if not self._token:
            self._token = _response_token(data)
            self._id = f"chatcmpl-{self._token}"
            self._model = str(data.get("modelVersion") or self._model)
        usage = usage_from_gemini(data.get("usageMetadata"))
        if usage is not None:
            self.usage = usage  # cumulative: the last one counts
        chunks = self._candidates(data)
        expected = max(self._expected, len(self._calls))
        self.done = len(self._finished) >= expected
        return chunks

    def _candidates(self, data: JSONObject) -> list[JSONObject]:
        candidates = data.get("candidates")
        if isinstance(candidates, list) and candidates:
            chunks: list[JSONObject] = []
            for position, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    chunks.extend(self._candidate(candidate, position))
            return chunks
        if _blocked(data):  # the prompt was refused: one filtered choice, then the end
            self._expected = 1
            return self._candidate({"finishReason": "SAFETY"}, 0)
        return []  # e.g. a usage-only event

    def _candidate(self, candidate: JSONObject, position: int) -> list[JSONObject]:
        index = candidate.get("index")
        index = index if isinstance(index, int) else position
        chunks: list[JSONObject] = []
        if index not in self._calls:
            self._calls[index] = 0
            chunks.append(self._chunk(index, {"role": "assistant", "content": ""}))
        text, calls = _split(_parts(candidate))
        if text:
            chunks.append(self._chunk(index, {"content": text}))
        for call, signature in calls:
            n = self._calls[index]
            self._calls[index] = n + 1
            tool_call = {"index": n, **_tool_call(call, signature, f"call_{self._token}_{n}")}
            chunks.append(self._chunk(index, {"tool_calls": [tool_call]}))
        reason = candidate.get("finishReason")
        if reason and index not in self._finished:
            self._finished.add(index)
            finish = finish_reason(reason, self._calls[index] > 0)
            chunks.append(self._chunk(index, {}, finish))
        return chunks

    def usage_chunk(self) -> JSONObject | None:
        if self.usage is None:
            return None
        return {**self._envelope(), "choices": [], "usage": self.usage.to_openai()}

    def _envelope(self) -> JSONObject:
        return chunk_envelope(self._id, self._created_s, self._model)

    def _chunk(self, index: int, delta: JSONObject, finish: str | None = None) -> JSONObject:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._envelope(), "choices": [choice]}
