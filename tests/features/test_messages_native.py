"""`POST /v1/messages` to an Anthropic deployment, natively: the client's own body goes
upstream (only `model` is the deployment's), with its `anthropic-version` and
`anthropic-beta`, and the upstream's message or events come back as they were sent,
while usage, cost, the request log and the cache work as on the translated path. Other
providers (and fallback to them) still go through the translation.

The official anthropic SDK -> the real gateway -> the Anthropic fake (which validates
what the real API validates, thinking and beta fields included)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import ANTHROPIC_KEY, GATEWAY_KEY
from tests.fakes.anthropic_fake import SIGNATURE, THINKING, FakeAnthropic, _stream_events
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features import dialects
from tests.features.dialects import three_provider_config
from tests.gatewayproc import GatewayProcess

ADMIN_KEY = "gw-native-admin-CANARY-71c2"
NO_CACHE = {"cache-control": "no-store"}
BETA = "context-management-2025-06-27, interleaved-thinking-2025-05-14"
DEPLOYED = "claude-sonnet-4-5"  # the claude deployment's model
SYSTEM = [
    {"type": "text", "text": "You are terse."},
    {"type": "text", "text": "Long shared context.", "cache_control": {"type": "ephemeral"}},
]
CONVERSATION = [
    {"role": "user", "content": [
        {"type": "text", "text": "Say hello", "cache_control": {"type": "ephemeral", "ttl": "5m"}},
    ]},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "A greeting.", "signature": "c2lnbmF0dXJlLTE="},
        {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="},
        {"type": "text", "text": "Hello."},
    ]},
    {"role": "user", "content": "Again, please"},
]  # fmt: skip
HI = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> GatewayProcess:
    config = three_provider_config(fake_openai, fake_anthropic, fake_gemini)
    config["auth"]["admin_keys"] = [ADMIN_KEY]
    config["routes"].append(
        {"name": "claude-then-gpt", "policy": "fallback", "models": ["claude", "gpt"]}
    )
    return start_gateway({**config, "cache": {"enabled": True}})


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


pytestmark = pytest.mark.usefixtures("no_fake_violations")


def logged(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    return dialects.logged(gateway, request_id, ADMIN_KEY)


def assert_sent_headers(fake: FakeAnthropic, beta: str | None) -> None:
    headers = {k.lower(): v for k, v in fake.received[-1].headers.items()}
    assert headers["x-api-key"] == ANTHROPIC_KEY and headers["anthropic-version"] == "2023-06-01"
    assert headers.get("anthropic-beta") == beta
    assert "x-client-extra" not in headers and "authorization" not in headers
    assert not any(GATEWAY_KEY in value for value in headers.values())


def test_the_body_goes_upstream_as_sent_and_the_message_comes_back_as_is(
    client: anthropic.Anthropic, gateway: GatewayProcess, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.cache_read_tokens, fake_anthropic.cache_creation_tokens = 5, 3
    raw = client.messages.with_raw_response.create(
        model="claude", max_tokens=64, system=SYSTEM, messages=CONVERSATION,  # type: ignore[arg-type]
        top_k=5, temperature=0.3, metadata={"user_id": "u-7"},
        extra_body={"context_management": {"edits": []}},
        extra_headers={"anthropic-beta": BETA, "x-client-extra": "not-for-upstream", **NO_CACHE},
    )  # fmt: skip
    sent = fake_anthropic.received[-1].json
    assert sent == {
        "model": DEPLOYED, "max_tokens": 64, "system": SYSTEM, "messages": CONVERSATION,
        "top_k": 5, "temperature": 0.3, "metadata": {"user_id": "u-7"},
        "context_management": {"edits": []},
    }  # fmt: skip
    assert_sent_headers(fake_anthropic, BETA)
    answer = json.loads(raw.http_response.content)
    assert answer == {
        "id": "msg_fake01", "type": "message", "role": "assistant", "model": DEPLOYED,
        "content": [{"type": "text", "text": fake_anthropic.reply}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 21, "cache_creation_input_tokens": 3,
                  "cache_read_input_tokens": 5, "output_tokens": 9},
    }  # fmt: skip
    # Accounting reads the same usage: input 21 + 5 read + 3 written, output 9.
    headers = raw.headers
    assert headers["x-gateway-deployment"] == "claude"
    assert (headers["x-gateway-tokens-input"], headers["x-gateway-tokens-output"]) == ("29", "9")
    row = logged(gateway, headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["stream"]) == (29, 9, False)
    assert float(row["cost_usd"]) == float(headers["x-gateway-cost-usd"]) > 0
    # The same question through chat (translated to Anthropic) costs the same.
    chat = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "claude", "max_tokens": 64, "messages": HI},
        headers={"authorization": f"Bearer {GATEWAY_KEY}", **NO_CACHE},
        timeout=10,
    )
    assert chat.headers["x-gateway-cost-usd"] == headers["x-gateway-cost-usd"]


def test_without_its_headers_the_providers_version_is_sent(
    gateway: GatewayProcess, fake_anthropic: FakeAnthropic
) -> None:
    answer = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": "claude", "max_tokens": 16, "messages": HI, "stream": False},
        headers={"x-api-key": GATEWAY_KEY, **NO_CACHE},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert_sent_headers(fake_anthropic, None)
    assert "stream" not in fake_anthropic.received[-1].json


def test_a_stream_is_relayed_event_for_event(
    client: anthropic.Anthropic, gateway: GatewayProcess, fake_anthropic: FakeAnthropic
) -> None:
    """Thinking on: the signed thinking block streams through (thinking_delta, then
    signature_delta), byte for byte what the upstream sent."""
    body = {
        "model": "claude", "max_tokens": 2048, "system": SYSTEM, "messages": CONVERSATION,
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "stream": True,
    }  # fmt: skip
    answer = httpx.post(
        f"{gateway.url}/v1/messages",
        json=body,
        headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01",
                 "anthropic-beta": BETA, "x-client-extra": "no"},
        timeout=10,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    sent = fake_anthropic.received[-1].json
    assert sent == {**body, "model": DEPLOYED}
    assert_sent_headers(fake_anthropic, BETA)
    assert answer.content == b"".join(_stream_events(fake_anthropic, sent, Behaviour()))
    assert answer.headers["x-gateway-cache"] == "BYPASS"  # thinking: never replayed
    row = logged(gateway, answer.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["stream"]) == (21, 9, True)
    assert float(row["cost_usd"]) > 0
    # The SDK assembles it, signature and all; sent back next turn, it goes up unchanged.
    request: dict[str, Any] = {**body, "extra_headers": {"anthropic-beta": BETA}}
    del request["stream"]
    with client.messages.stream(**request) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "thinking" in kinds and "signature" in kinds
    thinking = final.content[0]
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == (THINKING, SIGNATURE)
    turn = [*CONVERSATION[:2], {"role": "user", "content": "Once more"}]
    turn += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]}
    ]
    turn += [{"role": "user", "content": "Thanks"}]
    client.messages.create(
        model="claude", max_tokens=2048, messages=turn,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
    )  # fmt: skip
    assert fake_anthropic.received[-1].json["messages"][3]["content"][0] == {
        "type": "thinking", "thinking": THINKING, "signature": SIGNATURE,
    }  # fmt: skip


def test_a_claude_failure_falls_over_to_gpt_in_messages_form(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    fake_anthropic.script(Behaviour(status=503), Behaviour(status=503))
    raw = client.messages.with_raw_response.create(
        model="claude-then-gpt", max_tokens=32, messages=HI, top_k=4, extra_headers=NO_CACHE
    )
    message = raw.parse()
    assert raw.headers["x-gateway-deployment"] == "gpt"
    assert message.type == "message" and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == fake_openai.reply  # type: ignore[union-attr]
    assert "top_k" not in fake_openai.received[-1].json  # the translated chat body
    with client.messages.stream(
        model="claude-then-gpt", max_tokens=32, messages=HI, extra_headers=NO_CACHE
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].text.strip() == fake_openai.reply  # type: ignore[union-attr]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert fake_anthropic.calls == 2


def test_a_native_answer_is_cached_and_replayed_as_a_message(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropic
) -> None:
    question = [{"role": "user", "content": "cache me natively"}]
    first = client.messages.with_raw_response.create(
        model="claude", max_tokens=64, messages=question, top_k=5
    )
    assert first.headers["x-gateway-cache"] == "MISS"
    calls = fake_anthropic.calls
    hit = client.messages.with_raw_response.create(
        model="claude", max_tokens=64, messages=question, top_k=5
    )
    assert hit.headers["x-gateway-cache"] == "HIT" and fake_anthropic.calls == calls
    assert hit.parse().content == first.parse().content
    with client.messages.stream(
        model="claude", max_tokens=64, messages=question, top_k=5
    ) as stream:
        replayed = stream.get_final_message()
    assert fake_anthropic.calls == calls
    assert [b.model_dump(include={"type", "text"}) for b in replayed.content] == [
        b.model_dump(include={"type", "text"}) for b in first.parse().content
    ]
    # top_k reaches the upstream, so it is part of the key: another value is a miss.
    other = client.messages.with_raw_response.create(
        model="claude", max_tokens=64, messages=question, top_k=6
    )
    assert other.headers["x-gateway-cache"] == "MISS" and fake_anthropic.calls == calls + 1


def test_a_malformed_beta_header_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(
            model="claude", max_tokens=16, messages=HI,
            extra_headers={"anthropic-beta": "ok-2025, bad value;x=1", **NO_CACHE},
        )  # fmt: skip
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("anthropic-beta: ")
