"""OpenAI-compatible presets: each kind reaches the right URL with the right auth.

A preset fills in the base URL and says whether a key is needed; `base_url` in config
wins; a key is sent as a Bearer token and, for the kinds that do not need one, nothing
is sent without it. Pure: the adapter builds requests, nothing is sent.
"""

from __future__ import annotations

import pytest

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.config.catalog import Deployment, active_providers
from gateway.config.presets import PRESETS, needs_api_key, preset
from gateway.config.pricing import Prices
from gateway.config.schema import ProviderConfig, parse_config
from gateway.dialects.openai_chat import parse_chat_request
from gateway.providers.openai import OpenAIProvider
from gateway.providers.registry import adapter_class, build_providers
from gateway.types import EmbeddingRequest
from gateway.validate_config import reference_problems

KEY = "preset-key-CANARY-0000"
EXPECTED_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "vllm": "http://localhost:8000/v1",
    "ollama": "http://localhost:11434/v1",
    "together": "https://api.together.xyz/v1",
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
}
KEYLESS = ("vllm", "ollama", "openai_compatible")


def deployment(kind: str) -> Deployment:
    return Deployment(
        id=f"p/{kind}",
        name="m",
        provider="p",
        kind=kind,
        model="some-model",
        mode="chat",
        prices=Prices(0.0, 0.0),
        context_window_tokens=8192,
        max_output_tokens=None,
        capabilities=frozenset({"stream"}),
    )


def build(kind: str, **config: object) -> OpenAIProvider:
    cls = adapter_class(kind)
    assert cls is OpenAIProvider  # every preset is the OpenAI adapter
    made = cls("p", ProviderConfig(kind=kind, **config))  # type: ignore[call-arg, arg-type]
    assert isinstance(made, OpenAIProvider)
    return made


def chat_url_and_headers(p: OpenAIProvider, kind: str) -> tuple[str, dict[str, str]]:
    req = parse_chat_request(
        jsonutil.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        RequestLimits(),
    )
    sent = p.chat_request(req, deployment(kind))
    assert jsonutil.loads(sent.body or b"")["model"] == "some-model"
    return sent.url, dict(sent.headers)


def test_every_openai_compatible_preset_is_covered() -> None:
    compatible = {kind for kind, p in PRESETS.items() if p.adapter == "openai"}
    assert compatible == set(EXPECTED_BASE_URLS) | {"openai_compatible"}


@pytest.mark.parametrize("kind", sorted(EXPECTED_BASE_URLS))
def test_preset_url_and_bearer_key(kind: str) -> None:
    url, headers = chat_url_and_headers(build(kind, api_key=KEY), kind)
    assert url == f"{EXPECTED_BASE_URLS[kind]}/chat/completions"
    assert headers == {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    embed = build(kind, api_key=KEY).embeddings_request(
        EmbeddingRequest("e", ["x"], {"model": "e", "input": "x"}), deployment(kind)
    )
    assert embed.url == f"{EXPECTED_BASE_URLS[kind]}/embeddings"
    assert embed.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("kind", sorted(EXPECTED_BASE_URLS))
def test_config_base_url_overrides_the_preset(kind: str) -> None:
    p = build(kind, api_key=KEY, base_url="http://gpu-box.internal:9000/v1/")
    url, _ = chat_url_and_headers(p, kind)
    assert url == "http://gpu-box.internal:9000/v1/chat/completions"


@pytest.mark.parametrize("kind", KEYLESS)
def test_keyless_kinds_send_no_authorization(kind: str) -> None:
    p = build(kind, base_url="http://10.0.0.5:8000/v1")
    url, headers = chat_url_and_headers(p, kind)
    assert url == "http://10.0.0.5:8000/v1/chat/completions"
    assert "authorization" not in headers
    assert not needs_api_key(kind)
    # A key, when given, is still sent (a vLLM started with --api-key wants it).
    _, with_key = chat_url_and_headers(build(kind, base_url="http://h/v1", api_key=KEY), kind)
    assert with_key["authorization"] == f"Bearer {KEY}"


def test_hosted_kinds_need_a_key_and_are_skipped_without_one() -> None:
    hosted = sorted(set(EXPECTED_BASE_URLS) - set(KEYLESS))
    assert all(needs_api_key(kind) for kind in hosted)
    providers = "\n".join(f"  {kind}-p: {{kind: {kind}}}" for kind in [*hosted, "vllm", "ollama"])
    config = parse_config(f"providers:\n{providers}\n", "g", {})
    assert set(active_providers(config)) == {"vllm-p", "ollama-p"}
    assert set(build_providers(active_providers(config))) == {"vllm-p", "ollama-p"}


def test_unknown_kind_and_compatible_without_base_url_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown provider kind"):
        preset("not-a-kind")
    config = parse_config("providers: {x: {kind: openai_compatible}}\n", "g", {})
    assert reference_problems(config) == [
        "providers.x.base_url: required for kind openai_compatible"
    ]


def test_responses_api_is_for_openai_compatible_kinds_only() -> None:
    """`responses_api: true` forwards /v1/responses to `{base_url}/responses`: a kind
    translated by another adapter (Anthropic, Gemini, Azure) has no such endpoint here."""
    text = (
        "providers: {vllm: {kind: vllm}, claude: {kind: anthropic, api_key: k}}\n"
        "models:\n"
        "  - {name: a, provider: vllm, model: m, responses_api: true}\n"
        "  - {name: b, provider: claude, model: c, responses_api: true}\n"
    )
    problems = reference_problems(parse_config(text, "g", {}))
    assert problems == [
        "models[1].responses_api: the Responses API is OpenAI's; provider 'claude' is of "
        "kind 'anthropic'"
    ]
