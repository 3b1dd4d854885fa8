"""`POST /v1/responses` to a deployment with `responses_api: true`: forwarded natively to
OpenAI's Responses API (the fake validates the body against the published
`CreateResponse` schema and what a stateless caller must send), its Response and events
back as they came, but with the gateway's id; built-in tools reach it and only it;
the gateway keeps the conversation (`store: false` upstream, the turns sent by value),
so a conversation moves between native and translated deployments; fallback both ways;
usage, cost, the cache and the request log as on the translated path.

The official openai SDK and the OpenAI Agents SDK -> the real gateway -> the fakes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.openai_responses import CITED_URL, ENCRYPTED, TOOL_ARGUMENTS
from tests.fakes.server import Behaviour
from tests.features import dialects
from tests.features.dialects import (
    IN_USD,
    OUT_USD,
    deployment,
    run_weather_agent,
    three_provider_config,
)
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate

ADMIN_KEY = "gw-responses-native-admin-9d1"
NO_CACHE = {"cache-control": "no-store"}
DEPLOYED = "gpt-5"  # the native deployment's upstream model
WEB_SEARCH = {"type": "web_search"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
NATIVE_ROUTES = {
    "native": ["gpt-native"],
    "native-then-claude": ["gpt-native", "claude"],
    "claude-then-native": ["claude", "gpt-native"],
    "chat-then-native": ["gpt", "gpt-native"],
}


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> GatewayProcess:
    config = three_provider_config(fake_openai, fake_anthropic, fake_gemini)
    config["auth"]["admin_keys"] = [ADMIN_KEY]
    config["models"].append({**deployment("gpt-native", "oai", DEPLOYED), "responses_api": True})
    config["routes"] += [
        {"name": name, "policy": "fallback", "models": models}
        for name, models in NATIVE_ROUTES.items()
    ]
    return start_gateway({**config, "cache": {"enabled": True}})


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


pytestmark = pytest.mark.usefixtures("no_fake_violations")


def sent_upstream(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """The bodies the gateway sent to the fake's Responses API."""
    return [r.json for r in fake.received if r.path.endswith("/responses")]


def logged(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    return dialects.logged(gateway, request_id, ADMIN_KEY)


def raw_events(gateway: GatewayProcess, body: dict[str, Any]) -> tuple[list[Any], httpx.Headers]:
    """A streamed Response's events, each checked against the published schema."""
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", **NO_CACHE}
    with httpx.stream(
        "POST", f"{gateway.base_url}/responses", json={**body, "stream": True}, headers=headers
    ) as answer:
        assert answer.status_code == 200
        text = answer.read().decode()
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        validate(event, "ResponseStreamEvent")
        events.append(event)
    return events, answer.headers


def expected_cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * IN_USD + output_tokens * OUT_USD) / 1e6


# --- forwarded as it came ------------------------------------------------------------------


def test_a_built_in_tool_reaches_openai_and_its_items_come_back(
    client: openai.OpenAI, gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    raw = client.responses.with_raw_response.create(
        model="native",
        input="Weather in Paris?",
        instructions="Cite your sources.",
        tools=[WEB_SEARCH],  # type: ignore[list-item]
        include=["web_search_call.action.sources"],
        extra_body={"future_field": {"kept": True}},  # newer than the gateway: passed on
        extra_headers=NO_CACHE,
    )
    response = raw.parse()
    (sent,) = sent_upstream(fake_openai)
    assert sent["model"] == DEPLOYED and sent["store"] is False
    assert sent["tools"] == [WEB_SEARCH] and sent["instructions"] == "Cite your sources."
    assert sent["include"] == ["web_search_call.action.sources"]
    assert sent["future_field"] == {"kept": True}
    assert sent["input"] == "Weather in Paris?"  # the client's input, as it came
    body = raw.http_response.json()
    validate(body, "Response")
    assert body["id"].startswith("resp_") and body["id"] != "resp_fake_upstream_1"
    assert body["store"] is True and body["model"] == f"{DEPLOYED}-2025-08-07"
    assert [item["type"] for item in body["output"]] == ["web_search_call", "message"]
    assert body["output"][1]["content"][0]["annotations"][0]["url"] == CITED_URL
    assert response.output_text == fake_openai.reply
    usage = body["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (11, 7)
    assert raw.headers["x-gateway-deployment"] == "gpt-native"
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected_cost(11, 7))
    row = logged(gateway, raw.headers["x-request-id"])
    assert row["deployment"] == "gpt-native" and row["status"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (11, 7)
    stored = client.responses.retrieve(body["id"])
    assert stored.output[0].type == "web_search_call"


def test_a_native_stream_is_the_upstreams_events_with_the_gateways_id(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    events, headers = raw_events(
        gateway, {"model": "native", "input": "Weather?", "tools": [WEB_SEARCH]}
    )
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    # The upstream's own events, which the translated path never makes, went through.
    assert "response.web_search_call.searching" in kinds
    assert "response.output_text.annotation.added" in kinds
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1 and ids != {"resp_fake_upstream_1"}
    final = events[-1]["response"]
    assert final["usage"]["output_tokens"] == 7 and final["store"] is True
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == fake_openai.reply
    (sent,) = sent_upstream(fake_openai)
    assert sent["stream"] is True and sent["store"] is False
    assert headers["x-gateway-deployment"] == "gpt-native"
    row = logged(gateway, headers["x-request-id"])
    assert row["stream_outcome"] == "complete" and row["output_tokens"] == 7
    assert float(row["cost_usd"]) == pytest.approx(expected_cost(11, 7))


def test_the_sdk_stream_helper_reads_a_native_stream(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="native", input="Weather?", tools=[WEB_SEARCH], extra_headers=NO_CACHE
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.id.startswith("resp_") and final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == final.output_text


# --- the gateway keeps the conversation ----------------------------------------------------


def test_previous_response_id_is_sent_by_value_with_the_reasoning(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    first = client.responses.create(
        model="native", input="Say hello", reasoning={"effort": "low"}, extra_headers=NO_CACHE
    )
    assert first.output[0].type == "reasoning"
    assert first.output[0].encrypted_content == ENCRYPTED  # asked for, to carry it on
    second = client.responses.create(
        model="native",
        input="Again",
        previous_response_id=first.id,
        reasoning={"effort": "low"},
        extra_headers=NO_CACHE,
    )
    assert second.previous_response_id == first.id
    sent = sent_upstream(fake_openai)[1]
    assert "previous_response_id" not in sent and sent["store"] is False
    assert [i.get("type", "message") for i in sent["input"]] == [
        "message",
        "reasoning",
        "message",
        "message",
    ]
    assert sent["input"][1]["encrypted_content"] == ENCRYPTED
    assert sent["input"][0]["content"][0]["text"] == "Say hello"
    assert sent["input"][2] == {"role": "assistant", "content": fake_openai.reply}
    assert sent["input"][3] == {"role": "user", "content": "Again"}
    assert [item.get("id") for item in sent["input"]] == [None, "rs_fake1", None, None]
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "reasoning", "message", "message"]


def test_a_conversation_moves_between_native_and_translated_deployments(
    client: openai.OpenAI, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    native = client.responses.create(
        model="native", input="Weather in Paris?", tools=[WEB_SEARCH], extra_headers=NO_CACHE
    )
    translated = client.responses.create(
        model="claude", input="Thanks", previous_response_id=native.id, extra_headers=NO_CACHE
    )
    assert translated.output_text == fake_anthropic.reply
    messages = fake_anthropic.received[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert fake_openai.reply in json.dumps(messages[1])  # the cited answer, web search left out
    back = client.responses.create(
        model="native", input="And tomorrow?", previous_response_id=translated.id,
        extra_headers=NO_CACHE,
    )  # fmt: skip
    sent = sent_upstream(fake_openai)[-1]
    kinds = [item.get("type", "message") for item in sent["input"]]
    assert kinds == ["message", "web_search_call", "message", "message", "message", "message"]
    assert sent["input"][4] == {"role": "assistant", "content": fake_anthropic.reply}
    assert back.previous_response_id == translated.id


# --- eligibility and fallback --------------------------------------------------------------


def test_built_in_tools_go_only_to_a_native_deployment(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    plain = client.responses.with_raw_response.create(
        model="chat-then-native", input="hi", extra_headers=NO_CACHE
    )
    assert plain.headers["x-gateway-deployment"] == "gpt"  # first in the route: translated
    searched = client.responses.with_raw_response.create(
        model="chat-then-native", input="hi", tools=[WEB_SEARCH], extra_headers=NO_CACHE
    )
    assert searched.headers["x-gateway-deployment"] == "gpt-native"
    paths = [r.path for r in fake_openai.received]
    assert paths == ["/v1/chat/completions", "/v1/responses"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="claude", input="hi", tools=[WEB_SEARCH])
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == "tools[0].type"
    assert error["code"] == "unsupported_capability" and "responses_api" in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model="gpt",
            input=[{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}],
        )
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "input[0].content[0].type"
    assert fake_openai.calls == 2  # neither reached an upstream


@pytest.mark.parametrize("stream", [False, True])
def test_native_falls_over_to_a_translated_deployment_and_back(
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    stream: bool,
) -> None:
    fake_openai.script(Behaviour(status=500))
    over = client.responses.with_raw_response.create(
        model="native-then-claude", input="Say hello", stream=stream, extra_headers=NO_CACHE
    )
    assert over.headers["x-gateway-deployment"] == "claude"
    fake_anthropic.script(Behaviour(status=529))
    back = client.responses.with_raw_response.create(
        model="claude-then-native", input="Say hello", stream=stream, extra_headers=NO_CACHE
    )
    assert back.headers["x-gateway-deployment"] == "gpt-native"
    if stream:
        texts = []
        for raw in (over, back):
            events = list(raw.parse())
            assert events[-1].type == "response.completed"
            texts.append(events[-1].response.output_text)
        assert texts == [fake_anthropic.reply, fake_openai.reply]
    else:
        assert over.parse().output_text == fake_anthropic.reply
        assert back.parse().output_text == fake_openai.reply


def test_a_native_stream_failing_after_its_first_text_ends_with_response_failed(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    error = {"code": "server_error", "message": "upstream broke"}
    failed = {"type": "response.failed", "sequence_number": 6,
              "response": {"id": "resp_fake_upstream_1", "object": "response",
                           "status": "failed", "output": [], "error": error}}  # fmt: skip
    event = f"event: response.failed\ndata: {json.dumps(failed)}\n\n".encode()
    # After two text deltas, read apart (one read with the first would still fall over).
    fake_openai.script(Behaviour(replace_event=(6, event), chunk_delay_s=0.05))
    events, headers = raw_events(gateway, {"model": "native-then-claude", "input": "Say hello"})
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert events[-1]["response"]["id"] == events[0]["response"]["id"]
    assert headers["x-gateway-deployment"] == "gpt-native"  # committed: no fallback
    row = logged(gateway, headers["x-request-id"])
    assert row["stream_outcome"] == "error"


# --- the cache ----------------------------------------------------------------------------


def test_native_answers_are_cached_unless_a_built_in_tool_ran(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    body = {"model": "native", "input": "A cacheable question"}
    first = client.responses.with_raw_response.create(**body)  # type: ignore[arg-type]
    hit = client.responses.with_raw_response.create(**body)  # type: ignore[arg-type]
    assert (first.headers["x-gateway-cache"], hit.headers["x-gateway-cache"]) == ("MISS", "HIT")
    validate(hit.http_response.json(), "Response")
    assert hit.parse().output_text == first.parse().output_text == fake_openai.reply
    searched = {**body, "tools": [WEB_SEARCH]}
    for _ in range(2):
        raw = client.responses.with_raw_response.create(**searched)  # type: ignore[arg-type]
        assert raw.headers["x-gateway-cache"] == "BYPASS"
    assert len(sent_upstream(fake_openai)) == 3


# --- the Agents SDK ------------------------------------------------------------------------


def test_an_agent_runs_a_function_tool_on_a_native_deployment(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    result, seen = run_weather_agent(gateway, "native")
    assert seen == ["Paris"] and result.final_output == fake_openai.reply
    first, second = sent_upstream(fake_openai)
    assert first["tools"][0]["name"] == "get_weather"
    call, output = second["input"][-2:]
    assert call["type"] == "function_call" and call["arguments"] == TOOL_ARGUMENTS
    assert output == {"type": "function_call_output", "call_id": call["call_id"],
                      "output": "Sunny in Paris"}  # fmt: skip


def test_explain_shows_why_a_built_in_tool_skips_a_chat_deployment(
    gateway: GatewayProcess, fake_openai: FakeOpenAI
) -> None:
    body = {"model": "chat-then-native", "input": "hi", "tools": [WEB_SEARCH]}
    answer = httpx.post(
        f"{gateway.base_url}/route/explain",
        params={"dialect": "responses"},
        json=body,
        headers={"authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert [c["deployment_id"] for c in plan["ordered"]] == ["gpt-native"]
    (rejected,) = plan["rejected"]
    assert rejected["deployment_id"] == "gpt" and "responses_api" in rejected["detail"]
    assert fake_openai.calls == 0
