"""The internal `chat.completion` -> a Response object: its output items (an assistant
`message` with `output_text` (or `refusal`) parts, then one `function_call` item per tool
call), its status (`incomplete` when the model stopped at max_output_tokens or a content
filter) and its usage in the Responses API's names."""

from __future__ import annotations

import time
from typing import Any

from gateway.ids import new_id
from gateway.types import JSONObject

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponseShell:
    """What every Response object of one request carries: its id and time, and the
    request fields it repeats."""

    __slots__ = ("created_at", "echo", "id", "instructions", "model", "previous", "store")

    def __init__(
        self,
        model: str,
        instructions: str | None,
        previous: str | None,
        store: bool,
        echo: JSONObject,
    ) -> None:
        self.id = f"resp_{new_id()}"
        self.created_at = int(time.time())
        self.model = model
        self.instructions = instructions
        self.previous = previous
        self.store = store
        self.echo = echo

    def build(
        self,
        status: str,
        output: list[JSONObject],
        usage: JSONObject | None = None,
        model: object = None,
        incomplete: JSONObject | None = None,
        error: JSONObject | None = None,
    ) -> JSONObject:
        echo = self.echo
        response: JSONObject = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "max_output_tokens": echo["max_output_tokens"],
            "max_tool_calls": echo["max_tool_calls"],
            "model": model if isinstance(model, str) and model else self.model,
            "output": output,
            "parallel_tool_calls": echo["parallel_tool_calls"],
            "previous_response_id": self.previous,
            "reasoning": echo["reasoning"],
            "service_tier": echo["service_tier"],
            "store": self.store,
            "temperature": echo["temperature"],
            "text": echo["text"],
            "tool_choice": echo["tool_choice"],
            "tools": echo["tools"],
            "top_p": echo["top_p"],
            "truncation": echo["truncation"],
            "metadata": echo["metadata"],
        }
        # Objects (or a string) when there is one: the published schema has no null here.
        if usage is not None:
            response["usage"] = usage
        if echo["user"] is not None:
            response["user"] = echo["user"]
        return response

    def from_completion(self, completion: JSONObject) -> JSONObject:
        """A finished `chat.completion` (its first choice) as a Response."""
        choices = completion.get("choices") or [{}]
        choice = choices[0]
        message = choice.get("message") or {}
        status, incomplete = finish_status(choice.get("finish_reason"))
        item_status = "completed" if status == "completed" else "incomplete"
        output: list[JSONObject] = []
        parts = []
        if isinstance(message.get("content"), str) and message["content"]:
            parts.append(output_text(message["content"]))
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            parts.append({"type": "refusal", "refusal": message["refusal"]})
        if parts:
            output.append(message_item(f"msg_{new_id()}", parts, item_status))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            output.append(
                function_call_item(
                    f"fc_{new_id()}",
                    str(call.get("id") or f"call_{new_id()}"),
                    str(function.get("name") or ""),
                    str(function.get("arguments") or ""),
                    item_status,
                )
            )
        usage = response_usage(completion.get("usage"))
        return self.build(status, output, usage, completion.get("model"), incomplete)


def finish_status(reason: object) -> tuple[str, JSONObject | None]:
    """A chat finish_reason -> the Response's status and incomplete_details."""
    cause = _INCOMPLETE.get(reason) if isinstance(reason, str) else None
    if cause is None:
        return "completed", None
    return "incomplete", {"reason": cause}


def output_text(text: str) -> JSONObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, content: list[JSONObject], status: str) -> JSONObject:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": content}  # fmt: skip


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> JSONObject:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}  # fmt: skip


def response_usage(usage: Any) -> JSONObject | None:
    """Chat usage -> the Responses API's (input/output tokens and their details)."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _int(prompt_details.get("cached_tokens")),
            "cache_write_tokens": _int(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _int(completion_details.get("reasoning_tokens"))
        },
        "total_tokens": prompt + completion,
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
