"""`POST /v1/responses` (OpenAI's Responses API) end to end: the official openai SDK's
`responses.create` / `responses.stream` and the OpenAI Agents SDK -> the real gateway ->
each provider fake, as chat, and back as Response objects and events checked against
OpenAI's published schemas; stored responses (`previous_response_id`, GET, input_items,
DELETE) scoped to the caller's tenant, in SQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fakes.anthropic_fake import TOOL_PREAMBLE, FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import TOOL_ARGUMENTS, FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.dialects import ROUTES, reply_of, run_weather_agent, three_provider_config
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate
from tests.pgserver import PostgresServer

OTHER_TEAM_KEY = "gw-test-key-responses-other-team"
KEYS = [
    {"name": "k", "key": GATEWAY_KEY, "team": "t"},
    {"name": "other", "key": OTHER_TEAM_KEY, "team": "elsewhere"},
]
NO_CACHE = {"cache-control": "no-store"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PROVIDERS = ["gpt", "claude", "gemini"]


def config(*fakes: Any, **extra: Any) -> dict[str, Any]:
    return three_provider_config(*fakes, auth={"mode": "keys", "keys": KEYS}, **extra)


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> GatewayProcess:
    fakes = (fake_openai, fake_anthropic, fake_gemini)
    return start_gateway(config(*fakes, cache={"enabled": True}))


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def other_team(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=OTHER_TEAM_KEY, max_retries=0) as sdk:
        yield sdk


# Every request the gateway sent to a fake is one the real API would have accepted.
pytestmark = pytest.mark.usefixtures("no_fake_violations")


def events_of(gateway: GatewayProcess, body: dict[str, Any], key: str = GATEWAY_KEY) -> list[Any]:
    """A streamed Response's events, read raw: each checked against the published
    `ResponseStreamEvent` schema, named in its `event:` line, numbered from 0."""
    headers = {"authorization": f"Bearer {key}", **NO_CACHE}
    with httpx.stream(
        "POST", f"{gateway.base_url}/responses", json={**body, "stream": True}, headers=headers
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        text = answer.read().decode()
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        event = json.loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: ")
        validate(event, "ResponseStreamEvent")
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def shape(events: list[Any]) -> list[str]:
    """The event types, with runs of deltas as one."""
    kinds: list[str] = []
    for event in events:
        if not (kinds and kinds[-1] == event["type"] and event["type"].endswith(".delta")):
            kinds.append(event["type"])
    return kinds


TEXT_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
CALL_EVENTS = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]


# --- create ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", PROVIDERS)
def test_create_on_every_provider(
    client: openai.OpenAI,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    raw = client.responses.with_raw_response.create(
        model=route,
        input="Say hello",
        instructions="Answer briefly.",
        max_output_tokens=50,
        temperature=0.5,
        metadata={"ticket": "T-1"},
        extra_headers=NO_CACHE,
    )
    body = json.loads(raw.http_response.content)
    validate(body, "Response")
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.output_text == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    assert response.instructions == "Answer briefly." and response.metadata == {"ticket": "T-1"}
    assert (response.max_output_tokens, response.temperature, response.store) == (50, 0.5, True)
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-gateway-deployment"] == ROUTES[route][0]
    assert float(raw.headers["x-gateway-cost-usd"]) > 0


def test_the_request_goes_upstream_as_chat(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    client.responses.create(
        model="gpt",
        instructions="Be terse.",
        input=[
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        ],
        max_output_tokens=64,
        top_p=0.9,
        reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        user="end-user-1",
        store=False,
        extra_headers=NO_CACHE,
    )
    sent = fake_openai.received[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": "Weather?"},
    ]
    assert (sent["max_completion_tokens"], sent["top_p"], sent["user"]) == (64, 0.9, "end-user-1")
    assert sent["reasoning_effort"] == "low"
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    for field in ("input", "instructions", "store", "metadata", "text", "reasoning"):
        assert field not in sent


def test_max_output_tokens_reached_is_incomplete(
    client: openai.OpenAI, fake_anthropic: FakeAnthropic
) -> None:
    raw = client.responses.with_raw_response.create(
        model="claude", input="Say hello", max_output_tokens=2, extra_headers=NO_CACHE
    )
    validate(json.loads(raw.http_response.content), "Response")
    response = raw.parse()
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Hello from"  # the fake answers one word per token


# --- streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("route", PROVIDERS)
def test_stream_on_every_provider(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    reply = reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    events = events_of(gateway, {"model": route, "input": "Say hello"})
    assert shape(events) == [
        "response.created", "response.in_progress", *TEXT_EVENTS, "response.completed"
    ]  # fmt: skip
    created, completed = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert deltas == done["text"] and deltas.strip() == reply
    assert completed["output"][0]["content"][0]["text"] == deltas
    usage = completed["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    # The SDK's stream helper accumulates the same events into the final Response.
    with client.responses.stream(model=route, input="Say hello", extra_headers=NO_CACHE) as s:
        texts = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert final.output_text == "".join(texts) and final.output_text.strip() == reply
    assert final.usage is not None and final.usage.total_tokens > 0


def test_create_with_stream_true(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    stream = client.responses.create(
        model="gemini", input="Say hello", stream=True, extra_headers=NO_CACHE
    )
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text.strip() == fake_gemini.reply


# --- function tools ----------------------------------------------------------------------


@pytest.mark.parametrize("route", PROVIDERS)
def test_function_tool_round_trip(client: openai.OpenAI, route: str) -> None:
    first = client.responses.create(
        model=route, input="Weather in Paris?", tools=[WEATHER], extra_headers=NO_CACHE
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.id and call.status == "completed"
    second = client.responses.create(
        model=route,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
        extra_headers=NO_CACHE,
    )
    assert second.status == "completed" and second.output_text
    assert [item.type for item in second.output] == ["message"]


def test_tool_results_reach_the_upstream_as_tool_messages(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    client.responses.create(
        model="gpt",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        input=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city": "Paris"}'},
            {"type": "function_call", "call_id": "c2", "name": "get_weather",
             "arguments": '{"city": "Rome"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "Rainy"},
        ],
        extra_headers=NO_CACHE,
    )  # fmt: skip
    sent = fake_openai.received[-1].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent["messages"][1]["tool_calls"]] == ["c1", "c2"]
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "c2", "content": "Rainy"}


@pytest.mark.parametrize("route", PROVIDERS)
def test_streamed_function_call(gateway: GatewayProcess, route: str) -> None:
    events = events_of(gateway, {"model": route, "input": "Weather?", "tools": [WEATHER]})
    text = [] if route != "claude" else TEXT_EVENTS  # Claude says "Let me check." first
    assert shape(events) == [
        "response.created", "response.in_progress", *text, *CALL_EVENTS, "response.completed"
    ]  # fmt: skip
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(e["delta"] for e in deltas) == done["arguments"]
    assert json.loads(done["arguments"]) == {"city": "Paris"} and done["name"] == "get_weather"
    output = events[-1]["response"]["output"]
    assert output[-1]["type"] == "function_call" and output[-1]["arguments"] == done["arguments"]
    if route == "claude":
        assert output[0]["content"][0]["text"] == TOOL_PREAMBLE


# --- state: previous_response_id, GET, input_items, DELETE -------------------------------


def test_previous_response_id_continues_across_providers(
    client: openai.OpenAI, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    first = client.responses.create(model="gpt", input="My name is Ada.", extra_headers=NO_CACHE)
    second = client.responses.create(
        model="claude",
        input="What is my name?",
        instructions="Only for this turn.",
        previous_response_id=first.id,
        extra_headers=NO_CACHE,
    )
    assert second.previous_response_id == first.id
    sent = fake_anthropic.received[-1].json
    assert sent["system"] == "Only for this turn."
    turns = [(m["role"], "".join(b["text"] for b in m["content"])) for m in sent["messages"]]
    assert turns == [
        ("user", "My name is Ada."),
        ("assistant", fake_openai.reply),
        ("user", "What is my name?"),
    ]
    third = client.responses.create(
        model="gpt", input="And again?", previous_response_id=second.id, extra_headers=NO_CACHE
    )
    assert third.output_text == fake_openai.reply
    assert [m["content"] for m in fake_openai.received[-1].json["messages"]] == [
        "My name is Ada.",
        fake_openai.reply,
        "What is my name?",
        fake_anthropic.reply,
        "And again?",
    ]  # the instructions of an earlier turn are not carried over, as at OpenAI


def test_a_tool_call_continues_with_its_output_only(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    first = client.responses.create(
        model="gpt", input="Weather in Paris?", tools=[WEATHER], stream=False,
        extra_headers=NO_CACHE,
    )  # fmt: skip
    call = first.output[0]
    assert call.type == "function_call"
    second = client.responses.create(
        model="gpt",
        tools=[WEATHER],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        extra_headers=NO_CACHE,
    )
    assert second.output_text == fake_openai.reply
    messages = fake_openai.received[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS


def test_a_streamed_response_is_stored_before_it_completes(
    gateway: GatewayProcess, client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    events = events_of(gateway, {"model": "gemini", "input": "Say hello"})
    response_id = events[-1]["response"]["id"]
    stored = client.responses.retrieve(response_id)
    assert stored.model_dump(exclude_none=True) == openai.types.responses.Response.model_validate(
        events[-1]["response"]
    ).model_dump(exclude_none=True)
    follow = client.responses.create(
        model="gemini", input="More.", previous_response_id=response_id, extra_headers=NO_CACHE
    )
    assert follow.output_text == fake_gemini.reply


def test_get_input_items_and_delete(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    first = client.responses.create(model="gpt", input="One", extra_headers=NO_CACHE)
    second = client.responses.create(
        model="gpt", input="Two", previous_response_id=first.id, extra_headers=NO_CACHE
    )
    raw = httpx.get(f"{gateway.base_url}/responses/{second.id}", headers=bearer(GATEWAY_KEY))
    assert raw.status_code == 200
    validate(raw.json(), "Response")
    assert client.responses.retrieve(second.id).output_text == second.output_text
    listed = httpx.get(
        f"{gateway.base_url}/responses/{second.id}/input_items", headers=bearer(GATEWAY_KEY)
    ).json()
    validate(listed, "ResponseItemList")
    # The items it was made from: the earlier turn (input and output), then its own input;
    # newest first by default, as OpenAI lists them.
    texts = [item["content"][0]["text"] for item in listed["data"]]
    assert texts == ["Two", first.output_text, "One"] and listed["has_more"] is False
    assert listed["first_id"] == listed["data"][0]["id"]
    assert listed["last_id"] == listed["data"][-1]["id"]
    pages = client.responses.input_items.list(second.id, order="asc", limit=1)
    assert [item.content[0].text for item in pages] == ["One", first.output_text, "Two"]
    assert len(pages.data) == 1 and pages.has_more
    deleted = httpx.delete(f"{gateway.base_url}/responses/{first.id}", headers=bearer(GATEWAY_KEY))
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(second.id)


def test_another_tenant_sees_nothing(client: openai.OpenAI, other_team: openai.OpenAI) -> None:
    mine = client.responses.create(model="gpt", input="Secret plans", extra_headers=NO_CACHE)
    with pytest.raises(openai.NotFoundError):
        other_team.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other_team.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other_team.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as raised:
        other_team.responses.create(
            model="gpt", input="Continue", previous_response_id=mine.id, extra_headers=NO_CACHE
        )
    assert error_body(raised.value)["code"] == "previous_response_not_found"
    assert error_body(raised.value)["param"] == "previous_response_id"
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="claude", input="Forget me", store=False, extra_headers=NO_CACHE
    )
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="claude", input="?", previous_response_id=response.id)


# --- fallback and the cache --------------------------------------------------------------


def test_falls_over_to_the_next_provider(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    route = "gpt-then-claude-then-gemini"
    fake_openai.script(Behaviour(status=503))
    raw = client.responses.with_raw_response.create(model=route, input="hi", extra_headers=NO_CACHE)
    assert raw.parse().output_text == fake_anthropic.reply
    assert raw.headers["x-gateway-deployment"] == "claude"
    fake_openai.script(Behaviour(status=500))
    events = events_of(gateway, {"model": route, "input": "hi"})
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"].strip() == (
        fake_anthropic.reply
    )


def test_a_failure_after_the_first_event_is_response_failed(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Behaviour(drop_after_chunks=3))
    events = events_of(gateway, {"model": "gpt", "input": "hi"})
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "response.completed" not in shape(events)


def test_a_cached_answer_replays_as_a_response(
    client: openai.OpenAI, gateway: GatewayProcess, fake_gemini: FakeGemini
) -> None:
    prompt = "cache me as a response"
    first = client.responses.with_raw_response.create(model="gemini", input=prompt)
    calls = len(fake_gemini.received)
    hit = client.responses.with_raw_response.create(model="gemini", input=prompt)
    assert len(fake_gemini.received) == calls  # answered from the cache
    assert hit.headers["x-gateway-cache"] == "HIT"
    validate(json.loads(hit.http_response.content), "Response")
    assert hit.parse().output_text == first.parse().output_text == fake_gemini.reply
    assert hit.parse().id != first.parse().id
    assert client.responses.retrieve(hit.parse().id).output_text == fake_gemini.reply  # stored
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/responses",
        json={"model": "gemini", "input": prompt, "stream": True},
        headers=bearer(GATEWAY_KEY),
    ) as answer:
        assert answer.headers["x-gateway-cache"] == "HIT"
        blocks = answer.read().decode().strip().split("\n\n")
    events = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks]
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert shape(events) == [
        "response.created", "response.in_progress", *TEXT_EVENTS, "response.completed"
    ]  # fmt: skip
    assert events[-1]["response"]["usage"]["total_tokens"] > 0
    assert len(fake_gemini.received) == calls
    # The same prompt through chat is another entry: the cache key has the dialect.
    chat = client.chat.completions.with_raw_response.create(
        model="gemini", messages=[{"role": "user", "content": prompt}]
    )
    assert chat.headers["x-gateway-cache"] == "MISS"


def test_a_streamed_answer_is_cached_and_replayed_as_json(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    prompt = "cache me as a streamed response"
    stream = client.responses.create(model="gpt", input=prompt, stream=True)
    streamed = [e for e in stream][-1]
    assert streamed.type == "response.completed"
    calls = len(fake_openai.received)
    hit = client.responses.with_raw_response.create(model="gpt", input=prompt)
    assert hit.headers["x-gateway-cache"] == "HIT" and len(fake_openai.received) == calls
    assert hit.parse().output_text == streamed.response.output_text
    validate(json.loads(hit.http_response.content), "Response")


# --- errors ------------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def error_body(error: openai.APIStatusError) -> dict[str, Any]:
    body = error.body
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        (
            {"input": [{"role": "user", "content": [
                {"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [
                {"type": "input_file", "file_id": "file-1"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"api_base": "http://evil.example"}, "api_base"),
    ],
)  # fmt: skip
def test_what_the_gateway_cannot_do_is_a_clear_400(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    body = {"input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="gpt", input=body.pop("input"), extra_body=body)
    assert error_body(raised.value)["param"] == param
    assert error_body(raised.value)["type"] == "invalid_request_error"


def test_errors_are_openai_shaped(gateway: GatewayProcess) -> None:
    url = f"{gateway.base_url}/responses"
    with openai.OpenAI(base_url=gateway.base_url, api_key="wrong-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.responses.create(model="gpt", input="hi")
        with pytest.raises(openai.AuthenticationError):
            bad.responses.retrieve("resp_1")
    unauthorized = httpx.post(url, json={"model": "gpt", "input": "hi"})
    assert unauthorized.status_code == 401
    validate(unauthorized.json(), "ErrorResponse")
    unknown = httpx.post(url, json={"model": "nope", "input": "hi"}, headers=bearer(GATEWAY_KEY))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    validate(unknown.json(), "ErrorResponse")
    not_json = httpx.post(url, content=b"{", headers=bearer(GATEWAY_KEY))
    assert not_json.status_code == 400
    validate(not_json.json(), "ErrorResponse")
    missing = httpx.get(f"{url}/resp_nope", headers=bearer(GATEWAY_KEY))
    assert missing.status_code == 404
    validate(missing.json(), "ErrorResponse")


# --- the OpenAI Agents SDK ---------------------------------------------------------------


@pytest.mark.parametrize("route", PROVIDERS)
def test_an_agent_runs_with_a_function_tool(
    gateway: GatewayProcess,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    """The Agents SDK's default model (OpenAIResponsesModel, on `/v1/responses`): the
    upstream asks for the tool, the agent runs it and sends its output back, the upstream
    answers."""
    result, seen = run_weather_agent(gateway, route)
    assert seen == ["Paris"]
    assert result.final_output == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    assert isinstance(result.last_response_id, str) and result.last_response_id.startswith("resp_")


# --- SQL down ----------------------------------------------------------------------------


def test_sql_down_still_answers_and_reads_are_a_retryable_503(
    start_gateway: Callable[..., GatewayProcess],
    postgres_server: PostgresServer,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    database = {"url": postgres_server.create_database("responses_sql_down")}
    gateway = start_gateway(config(fake_openai, fake_anthropic, fake_gemini, database=database))
    url, auth = f"{gateway.base_url}/responses", bearer(GATEWAY_KEY)
    before = httpx.post(url, json={"model": "gpt", "input": "before"}, headers=auth).json()
    postgres_server.stop()
    try:
        during = httpx.post(url, json={"model": "gpt", "input": "during"}, headers=auth)
        assert during.status_code == 200  # answered; held in memory until SQL is back
        held = during.json()["id"]
        follow = {"model": "gpt", "input": "more", "previous_response_id": held}
        assert httpx.post(url, json=follow, headers=auth).status_code == 200
        refused = httpx.get(f"{url}/{before['id']}", headers=auth)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "database_unavailable"
        chained = {"model": "gpt", "input": "more", "previous_response_id": before["id"]}
        assert httpx.post(url, json=chained, headers=auth).status_code == 503
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 15
    while httpx.get(f"{url}/{before['id']}", headers=auth).status_code != 200:
        assert time.monotonic() < deadline, "reads did not come back with SQL"
        time.sleep(0.2)
    # What was held while SQL was down is written by now (at the latest when the gateway
    # stops): a new process, which never held it, reads it from SQL.
    gateway.stop()
    gateway.start()
    stored = httpx.get(f"{url}/{held}", headers=auth)
    assert stored.status_code == 200 and stored.json()["output"][0]["content"][0]["text"]
