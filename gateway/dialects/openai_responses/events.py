"""A streamed Response: the internal chat chunks -> the Responses API's events, in its
order, each `event: <type>` + `data: <json>` with a `sequence_number` from 0:

    response.created, response.in_progress                          (at the first chunk)
    response.output_item.added (message), response.content_part.added,
    response.output_text.delta ..., response.output_text.done,
    response.content_part.done, response.output_item.done            (text)
    response.output_item.added (function_call),
    response.function_call_arguments.delta ..., .._arguments.done,
    response.output_item.done                                        (per tool call)
    response.completed | response.incomplete                         (with usage)

A failure past the commit point is one `response.failed` (its error, the output so
far) and nothing after it. Only the first choice is streamed (the Responses API has
no `n`).

A native stream (a deployment with `responses_api: true` was sent the request) is the
upstream's own events (`raw`), each as it came but for the Response objects some carry,
made the gateway's (gateway.dialects.openai_responses.native); an in-band failure then
continues the upstream's sequence numbers and carries the output items it finished."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import jsonutil
from gateway.dialects.openai_responses.native import own_response
from gateway.dialects.openai_responses.output import (
    ResponseShell,
    finish_status,
    function_call_item,
    message_item,
    output_text,
    response_usage,
)
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.types import JSONObject, SSEEvent


class _Message:
    __slots__ = ("id", "index", "kind", "parts", "texts")

    def __init__(self, index: int) -> None:
        self.id = f"msg_{new_id()}"
        self.index = index
        self.parts: list[JSONObject] = []
        self.kind: str | None = None  # the open part's: output_text or refusal
        self.texts: list[str] = []


class _Call:
    __slots__ = ("arguments", "call_id", "chat_index", "id", "index", "name")

    def __init__(self, chat_index: int, index: int, call_id: str, name: str) -> None:
        self.chat_index = chat_index
        self.id = f"fc_{new_id()}"
        self.index = index
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []


class ResponsesEncoder:
    """One stream's events; `on_final` gets the finished Response (completed or
    incomplete) before its closing event is encoded."""

    def __init__(self, shell: ResponseShell, on_final: Callable[[JSONObject], None]) -> None:
        self._shell = shell
        self._on_final = on_final
        self._sequence = 0
        self._started = False
        self._output: list[JSONObject] = []
        self._message: _Message | None = None
        self._call: _Call | None = None
        self._finish: object = None
        self._usage: Any = None
        self._model: object = None
        self._native = False

    def raw(self, event: SSEEvent) -> bytes:
        """An upstream Responses API event (a native stream): as it came, but a Response
        it carries is made the gateway's; the completed (or incomplete) one is final."""
        self._native = self._started = True
        data = jsonutil.loads(event.data)
        if not isinstance(data, dict):
            return b"data: " + event.data.encode() + b"\n\n"
        sequence = data.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            self._sequence = sequence + 1
        kind = data.get("type")
        if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            self._output.append(data["item"])  # for a failure's output so far
        response = data.get("response")
        if isinstance(response, dict):
            data["response"] = response = own_response(response, self._shell)
            self._model = response.get("model") or self._model
            if kind in ("response.completed", "response.incomplete"):
                self._on_final(response)
        name = event.event or (kind if isinstance(kind, str) else "")
        head = b"event: " + name.encode() + b"\n" if name else b""
        return head + b"data: " + jsonutil.dumps(data) + b"\n\n"

    def chunk(self, chunk: JSONObject) -> bytes:
        pieces = self._start(chunk)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for kind in ("content", "refusal"):
                text = delta.get(kind)
                if isinstance(text, str) and text:
                    pieces += self._text("output_text" if kind == "content" else kind, text)
            for call in delta.get("tool_calls") or ():
                pieces += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return b"".join(pieces)

    def end(self, usage_chunk: JSONObject | None) -> bytes:
        if self._native:
            return b""  # the upstream's own response.completed went out
        pieces = self._start(usage_chunk or {})
        if usage_chunk is not None and usage_chunk.get("usage"):
            self._usage = usage_chunk["usage"]
        status, incomplete = finish_status(self._finish)
        pieces += self._close_all("completed" if status == "completed" else "incomplete")
        response = self._shell.build(
            status, self._output, response_usage(self._usage), self._model, incomplete
        )
        self._on_final(response)
        pieces.append(self._event(f"response.{status}", response=response))
        return b"".join(pieces)

    def error(self, error: GatewayError) -> bytes:
        pieces = self._start({})
        pieces += self._close_all("incomplete")
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failed = self._shell.build(
            "failed",
            self._output,
            response_usage(self._usage),
            self._model,
            error={"code": code, "message": error.message},
        )
        pieces.append(self._event("response.failed", response=failed))
        return b"".join(pieces)

    # --- events ------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + jsonutil.dumps(payload) + b"\n\n"

    def _start(self, chunk: JSONObject) -> list[bytes]:
        if self._model is None and chunk.get("model"):
            self._model = chunk["model"]
        if self._started:
            return []
        self._started = True
        shell = self._shell.build("in_progress", [], None, self._model)
        return [
            self._event("response.created", response=shell),
            self._event("response.in_progress", response=shell),
        ]

    def _text(self, kind: str, text: str) -> list[bytes]:
        pieces = self._close_call("completed") if self._call is not None else []
        message = self._message
        if message is None:
            message = self._message = _Message(len(self._output))
            item = message_item(message.id, [], "in_progress")
            self._output.append(item)
            pieces.append(self._added(message.index, item))
        where = {"item_id": message.id, "output_index": message.index}
        if message.kind != kind:
            if message.kind is not None:
                pieces += self._close_part(message)
            message.kind = kind
            part = output_text("") if kind == "output_text" else {"type": kind, "refusal": ""}
            index = len(message.parts)
            pieces.append(
                self._event("response.content_part.added", **where, content_index=index, part=part)
            )
        message.texts.append(text)
        index = len(message.parts)
        if kind == "output_text":
            pieces.append(
                self._event(
                    "response.output_text.delta",
                    **where,
                    content_index=index,
                    delta=text,
                    logprobs=[],
                )
            )
        else:
            pieces.append(
                self._event("response.refusal.delta", **where, content_index=index, delta=text)
            )
        return pieces

    def _close_part(self, message: _Message) -> list[bytes]:
        text, index = "".join(message.texts), len(message.parts)
        where = {"item_id": message.id, "output_index": message.index, "content_index": index}
        if message.kind == "output_text":
            part = output_text(text)
            done = self._event("response.output_text.done", **where, text=text, logprobs=[])
        else:
            part = {"type": "refusal", "refusal": text}
            done = self._event("response.refusal.done", **where, refusal=text)
        message.parts.append(part)
        message.kind, message.texts = None, []
        return [done, self._event("response.content_part.done", **where, part=part)]

    def _close_message(self, status: str) -> list[bytes]:
        message = self._message
        assert message is not None
        pieces = self._close_part(message) if message.kind is not None else []
        item = message_item(message.id, message.parts, status)
        self._output[message.index] = item
        self._message = None
        return [*pieces, self._done(message.index, item)]

    def _tool_call(self, delta: JSONObject) -> list[bytes]:
        chat_index = delta.get("index", 0)
        function = delta.get("function") or {}
        pieces: list[bytes] = []
        call = self._call
        if call is None or call.chat_index != chat_index:
            # Calls come one after another (every adapter streams them so): the one
            # before is done when the next starts, as in OpenAI's own streams.
            if self._message is not None:
                pieces += self._close_message("completed")
            if call is not None:
                pieces += self._close_call("completed")
            call_id = delta.get("id") or f"call_{new_id()}"
            call = self._call = _Call(
                chat_index, len(self._output), str(call_id), str(function.get("name") or "")
            )
            item = function_call_item(call.id, call.call_id, call.name, "", "in_progress")
            self._output.append(item)
            pieces.append(self._added(call.index, item))
        elif isinstance(function.get("name"), str):
            call.name += function["name"]  # a name sent in pieces
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            pieces.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.index,
                    delta=arguments,
                )
            )
        return pieces

    def _close_call(self, status: str) -> list[bytes]:
        call = self._call
        assert call is not None
        arguments = "".join(call.arguments)
        item = function_call_item(call.id, call.call_id, call.name, arguments, status)
        self._output[call.index] = item
        self._call = None
        done = self._event(
            "response.function_call_arguments.done",
            item_id=call.id,
            output_index=call.index,
            name=call.name,
            arguments=arguments,
        )
        return [done, self._done(call.index, item)]

    def _close_all(self, status: str) -> list[bytes]:
        pieces = self._close_message(status) if self._message is not None else []
        if self._call is not None:
            pieces += self._close_call(status)
        return pieces

    def _added(self, index: int, item: JSONObject) -> bytes:
        return self._event("response.output_item.added", output_index=index, item=item)

    def _done(self, index: int, item: JSONObject) -> bytes:
        return self._event("response.output_item.done", output_index=index, item=item)
