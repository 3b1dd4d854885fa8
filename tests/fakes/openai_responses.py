"""The fake OpenAI's Responses API (`POST /v1/responses`, JSON and SSE), for deployments
with `responses_api: true`.

It checks the body against OpenAI's published `CreateResponse` schema and what a
stateless caller must get right (the gateway keeps the conversation, so it must send
`store: false`, no `previous_response_id`, items by value: no ids on messages, function
calls and outputs (ids name stored items: with `store: false` there are none), no
reasoning item without its `encrypted_content`, every function_call_output after its
call).

Its answer depends on the request, as the real API's would: a web_search tool gives a
`web_search_call` item and a cited answer; `reasoning` gives a reasoning item first
(with `encrypted_content` when `include` asks for it); function tools (unless the last
input item is a tool's output) give a `function_call`; else a message. Streams carry
the Responses API's events in order, with sequence numbers, usage in
`response.completed`."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakes.server import Behaviour, write_sse
from tests.openai_schema import validate_request

if TYPE_CHECKING:
    from tests.fakes.openai_fake import FakeOpenAI

TOOL_ARGUMENTS = '{"city": "Paris"}'
ENCRYPTED = "gAAAA-fake-encrypted-reasoning"
CITED_URL = "https://example.com/weather"
_BY_VALUE = ("message", "function_call", "function_call_output")


def responses_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    try:
        validate_request(body, "CreateResponse")
    except Exception as exc:  # noqa: BLE001 (jsonschema's ValidationError, reported)
        problems.append(f"not a CreateResponse: {str(exc).splitlines()[0]}")
    if body.get("store") is not False:
        problems.append("store is not false (the gateway keeps the state)")
    if "previous_response_id" in body:
        problems.append("previous_response_id sent upstream (an id OpenAI never stored)")
    for forbidden in ("api_base", "base_url", "api_key"):
        if forbidden in body:
            problems.append(f"forwarded field {forbidden}")
    items = body.get("input")
    calls: set[str] = set()
    for item in items if isinstance(items, list) else ():
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind in _BY_VALUE and "id" in item:
            problems.append(f"{kind} item sent with an id while store is false")
        if kind == "reasoning" and not item.get("encrypted_content"):
            problems.append("reasoning item without encrypted_content while store is false")
        if kind == "function_call":
            calls.add(item.get("call_id"))
        if kind == "function_call_output" and item.get("call_id") not in calls:
            problems.append("function_call_output without a preceding function_call")
    return problems


def _last_is_tool_output(body: dict[str, Any]) -> bool:
    items = body.get("input")
    return (
        isinstance(items, list)
        and bool(items)
        and items[-1].get("type")
        in (
            "function_call_output",
            "web_search_call",
        )
    )


def _plan(fake: FakeOpenAI, body: dict[str, Any], b: Behaviour) -> list[dict[str, Any]]:
    """The output items this request gets (complete, status `completed`)."""
    tools = body.get("tools") or []
    output: list[dict[str, Any]] = []
    if isinstance(body.get("reasoning"), dict):
        reasoning: dict[str, Any] = {"id": "rs_fake1", "type": "reasoning", "summary": []}
        if "reasoning.encrypted_content" in (body.get("include") or ()):
            reasoning["encrypted_content"] = ENCRYPTED
        output.append(reasoning)
    functions = [t for t in tools if t.get("type") == "function"]
    if functions and body.get("tool_choice") != "none" and not _last_is_tool_output(body):
        output.append({"id": "fc_fake1", "type": "function_call", "status": "completed",
                       "call_id": "call_fake1", "name": functions[0]["name"],
                       "arguments": TOOL_ARGUMENTS})  # fmt: skip
        return output
    text = b.content or fake.reply
    annotations: list[dict[str, Any]] = []
    if any(str(t.get("type", "")).startswith("web_search") for t in tools):
        output.append({"id": "ws_fake1", "type": "web_search_call", "status": "completed",
                       "action": {"type": "search", "query": "weather"}})  # fmt: skip
        annotations.append({"type": "url_citation", "url": CITED_URL, "title": "Weather",
                            "start_index": 0, "end_index": len(text)})  # fmt: skip
    part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}
    output.append({"id": "msg_fake1", "type": "message", "role": "assistant",
                   "status": "completed", "content": [part]})  # fmt: skip
    return output


def _usage(fake: FakeOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    reasoning = 3 if isinstance(body.get("reasoning"), dict) else 0
    output = fake.completion_tokens + reasoning
    return {
        "input_tokens": fake.prompt_tokens,
        "input_tokens_details": {"cached_tokens": fake.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": fake.prompt_tokens + output,
    }


def _response(
    body: dict[str, Any], status: str, output: list[dict[str, Any]], usage: Any
) -> dict[str, Any]:
    response = {
        "id": "resp_fake_upstream_1",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": f"{body['model']}-2025-08-07",
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }
    if usage is not None:
        response["usage"] = usage
    return response


async def responses_handler(
    request: web.Request, fake: FakeOpenAI, b: Behaviour, body: Any
) -> web.StreamResponse:
    output = _plan(fake, body, b)
    usage = _usage(fake, body) if b.usage else None
    if body.get("stream"):
        return await write_sse(request, _events(body, output, usage), b)
    return web.json_response(_response(body, "completed", output, usage))


def _events(body: dict[str, Any], output: list[dict[str, Any]], usage: Any) -> list[bytes]:
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    started = _response(body, "in_progress", [], None)
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(output):
        _item_events(emit, index, item)
    emit("response.completed", response=_response(body, "completed", output, usage))
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def _item_events(emit: Any, index: int, item: dict[str, Any]) -> None:
    where = {"output_index": index, "item_id": item["id"]}
    kind = item["type"]
    if kind == "message":
        emit("response.output_item.added", output_index=index,
             item={**item, "status": "in_progress", "content": []})  # fmt: skip
        part = item["content"][0]
        empty = {**part, "text": "", "annotations": []}
        emit("response.content_part.added", **where, content_index=0, part=empty)
        for word in re.findall(r"\S+\s*", part["text"]):
            emit("response.output_text.delta", **where, content_index=0, delta=word,
                 logprobs=[])  # fmt: skip
        for n, annotation in enumerate(part["annotations"]):
            emit("response.output_text.annotation.added", **where, content_index=0,
                 annotation_index=n, annotation=annotation)  # fmt: skip
        emit("response.output_text.done", **where, content_index=0, text=part["text"],
             logprobs=[])  # fmt: skip
        emit("response.content_part.done", **where, content_index=0, part=part)
    elif kind == "function_call":
        emit("response.output_item.added", output_index=index,
             item={**item, "status": "in_progress", "arguments": ""})  # fmt: skip
        arguments = item["arguments"]
        for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            emit("response.function_call_arguments.delta", **where, delta=piece)
        emit("response.function_call_arguments.done", **where, name=item["name"],
             arguments=arguments)  # fmt: skip
    elif kind == "web_search_call":
        emit("response.output_item.added", output_index=index,
             item={**item, "status": "in_progress"})  # fmt: skip
        for phase in ("in_progress", "searching", "completed"):
            emit(f"response.web_search_call.{phase}", **where)
    else:
        emit("response.output_item.added", output_index=index, item=item)
    emit("response.output_item.done", output_index=index, item=item)
