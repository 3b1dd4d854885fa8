"""`POST /v1/completions` (OpenAI's legacy completions) end to end: the official openai
SDK's `completions.create` -> the real gateway -> each provider fake, as chat, and back
as `text_completion` objects checked against OpenAI's published schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Behaviour
from tests.features.dialects import ROUTES, reply_of, three_provider_config
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import validate


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> GatewayProcess:
    config = three_provider_config(fake_openai, fake_anthropic, fake_gemini)
    return start_gateway({**config, "cache": {"enabled": True}})


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


# Every request the gateway sent to a fake is one the real API would have accepted.
pytestmark = pytest.mark.usefixtures("no_fake_violations")


NO_CACHE = {"cache-control": "no-store"}


@pytest.mark.parametrize("route", ["gpt", "claude", "gemini"])
def test_completion_on_every_provider(
    client: openai.OpenAI,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    raw = client.completions.with_raw_response.create(
        model=route, prompt="Say hello", max_tokens=50, stop=["END"], extra_headers=NO_CACHE
    )
    body = json.loads(raw.http_response.content)
    validate(body, "CreateCompletionResponse")
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-gateway-deployment"] == ROUTES[route][0]
    assert float(raw.headers["x-gateway-cost-usd"]) > 0


def test_the_prompt_goes_upstream_as_one_user_message(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    client.completions.create(
        model="gpt", prompt=["Once upon a time"], max_tokens=7, temperature=0.5,
        extra_headers=NO_CACHE,
    )  # fmt: skip
    sent = fake_openai.received[-1].json
    assert sent["messages"] == [{"role": "user", "content": "Once upon a time"}]
    assert (sent["max_tokens"], sent["temperature"]) == (7, 0.5)
    assert "prompt" not in sent


@pytest.mark.parametrize("route", ["gpt", "claude", "gemini"])
def test_streamed_completion_on_every_provider(
    client: openai.OpenAI,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    chunks = list(
        client.completions.create(
            model=route,
            prompt="Say hello",
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=NO_CACHE,
        )  # fmt: skip
    )
    for chunk in chunks:
        # The schema is the non-streamed answer's, whose finish_reason is never null: a
        # chunk before the last has none yet (null, as OpenAI's own streams send), checked
        # here as if it were the last.
        body = chunk.model_dump(exclude_unset=True)
        for choice in body["choices"]:
            choice["finish_reason"] = choice["finish_reason"] or "stop"
        validate(body, "CreateCompletionResponse")
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip() == reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_falls_over_to_the_next_provider(
    client: openai.OpenAI, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    fake_openai.script(Behaviour(status=503))
    raw = client.completions.with_raw_response.create(
        model="gpt-then-claude-then-gemini", prompt="hi", extra_headers=NO_CACHE
    )
    assert raw.parse().choices[0].text == fake_anthropic.reply
    assert raw.headers["x-gateway-deployment"] == "claude"


def test_a_cached_answer_replays_as_a_completion(
    client: openai.OpenAI, fake_gemini: FakeGemini
) -> None:
    prompt = "cache me as a completion"
    first = client.completions.with_raw_response.create(model="gemini", prompt=prompt)
    calls = len(fake_gemini.received)
    hit = client.completions.with_raw_response.create(model="gemini", prompt=prompt)
    assert len(fake_gemini.received) == calls  # answered from the cache
    assert hit.headers["x-gateway-cache"] == "HIT"
    validate(json.loads(hit.http_response.content), "CreateCompletionResponse")
    assert hit.parse().choices[0].text == first.parse().choices[0].text == fake_gemini.reply
    streamed = list(client.completions.create(model="gemini", prompt=prompt, stream=True))
    assert len(fake_gemini.received) == calls
    assert "".join(c.choices[0].text for c in streamed if c.choices).strip() == fake_gemini.reply
    # The same prompt through chat is another entry: the cache key has the dialect.
    chat = client.chat.completions.with_raw_response.create(
        model="gemini", messages=[{"role": "user", "content": prompt}]
    )
    assert chat.headers["x-gateway-cache"] == "MISS"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "the end"}, "suffix"),
        ({"echo": True}, "echo"),
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_what_chat_models_cannot_do_is_a_clear_400(
    client: openai.OpenAI, extra: dict[str, object], param: str
) -> None:
    body = {"prompt": "hi", **extra}
    prompt = body.pop("prompt")
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="gpt", prompt=prompt, extra_body=body)  # type: ignore[arg-type]
    assert raised.value.status_code == 400
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == param, error


def test_errors_are_openai_shaped(gateway: GatewayProcess) -> None:
    url = f"{gateway.base_url}/completions"
    unauthorized = httpx.post(url, json={"model": "gpt", "prompt": "hi"})
    assert unauthorized.status_code == 401
    validate(unauthorized.json(), "ErrorResponse")
    unknown = httpx.post(
        url, json={"model": "nope", "prompt": "hi"},
        headers={"authorization": f"Bearer {GATEWAY_KEY}"},
    )  # fmt: skip
    assert unknown.status_code == 404
    validate(unknown.json(), "ErrorResponse")


# --- LlamaIndex's OpenAILike (its default mode is the legacy completions API) ----------


@pytest.mark.parametrize("route", ["gpt", "claude", "gemini", "gpt-then-claude-then-gemini"])
def test_llamaindex_openai_like_in_its_default_mode(
    gateway: GatewayProcess,
    route: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
) -> None:
    """OpenAILike without `is_chat_model` calls `/v1/completions` (complete and
    stream_complete); on the route across providers the first two fail and the third
    answers."""
    from llama_index.llms.openai_like import OpenAILike

    paths: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: paths.append(r.url.path)]})
    llm = OpenAILike(
        model=route,
        api_base=gateway.base_url,
        api_key=GATEWAY_KEY,
        max_retries=0,
        default_headers=NO_CACHE,
        http_client=http,
    )
    assert not llm.metadata.is_chat_model
    expected = reply_of(route, fake_openai, fake_anthropic, fake_gemini)
    if route == "gpt-then-claude-then-gemini":
        fake_openai.script(Behaviour(status=500), Behaviour(status=500))
        fake_anthropic.script(Behaviour(status=529), Behaviour(status=529))
        expected = fake_gemini.reply
    assert llm.complete("Say hello").text == expected
    streamed = "".join(piece.delta or "" for piece in llm.stream_complete("Say hello"))
    assert streamed.strip() == expected.strip()
    http.close()
    assert paths == ["/v1/completions", "/v1/completions"]
