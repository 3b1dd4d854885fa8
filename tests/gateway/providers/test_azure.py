"""The Azure OpenAI adapter: deployment URLs, api-version, api-key auth, Azure's stream quirks.

Pure: requests are built and answers parsed without a network; what Azure's fake accepts
is covered end to end in tests/features/test_azure_e2e.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import jsonutil
from gateway.config import RequestLimits
from gateway.config.catalog import Deployment
from gateway.config.pricing import Prices
from gateway.config.schema import ProviderConfig, parse_config
from gateway.dialects.openai_chat import parse_chat_request
from gateway.errors import (
    UpstreamAuthError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from gateway.providers.azure import DEFAULT_API_VERSION, AzureProvider, AzureStream
from gateway.providers.registry import adapter_class
from gateway.types import EmbeddingRequest, SSEEvent
from gateway.validate_config import reference_problems

KEY = "azure-test-key-CANARY-0000"
ENDPOINT = "https://my-resource.openai.azure.com"
ASK = [{"role": "user", "content": "Hi"}]


def provider(**config: Any) -> AzureProvider:
    settings = {"base_url": ENDPOINT, **config}
    return AzureProvider("az", ProviderConfig(kind="azure", api_key=KEY, **settings))


def deployment(model: str = "gpt4o-prod") -> Deployment:
    return Deployment(
        id=f"az/{model}",
        name="gpt-4o",
        provider="az",
        kind="azure",
        model=model,
        mode="chat",
        prices=Prices(2.5, 10.0),
        context_window_tokens=128_000,
        max_output_tokens=16_384,
        capabilities=frozenset({"tools", "vision", "json_schema", "stream"}),
    )


def chat_body(**extra: Any) -> bytes:
    return jsonutil.dumps({"model": "gpt-4o", "messages": ASK, **extra})


def test_chat_url_headers_and_body() -> None:
    req = parse_chat_request(chat_body(temperature=0.2, seed=1), RequestLimits())
    sent = provider(headers={"x-ms-client-request-id": "abc"}).chat_request(req, deployment())
    assert sent.url == (
        f"{ENDPOINT}/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    )
    assert DEFAULT_API_VERSION == "2024-10-21"
    assert dict(sent.headers) == {
        "content-type": "application/json",
        "x-ms-client-request-id": "abc",
        "api-key": KEY,
    }
    assert KEY not in sent.url
    # OpenAI's body, unchanged but for the model (Azure ignores it on deployment routes).
    body = jsonutil.loads(sent.body or b"")
    assert body == {"model": "gpt4o-prod", "messages": ASK, "temperature": 0.2, "seed": 1}


def test_stream_forces_usage_like_openai() -> None:
    req = parse_chat_request(chat_body(stream=True), RequestLimits())
    body = jsonutil.loads(provider().chat_request(req, deployment()).body or b"")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("base_url", "api_version", "expected"),
    [
        (f"{ENDPOINT}/", None, f"{ENDPOINT}/openai/deployments/gpt4o-prod/embeddings"),
        (
            f"{ENDPOINT}/openai",
            "2024-06-01",
            f"{ENDPOINT}/openai/deployments/gpt4o-prod/embeddings",
        ),
        (f"{ENDPOINT}/openai/", "v1", f"{ENDPOINT}/openai/v1/embeddings"),
    ],
    ids=["default-version", "trailing-openai", "v1-api"],
)
def test_embeddings_url_variants(base_url: str, api_version: str | None, expected: str) -> None:
    p = provider(base_url=base_url, api_version=api_version)
    req = EmbeddingRequest("e", ["a"], {"model": "e", "input": ["a"]})
    sent = p.embeddings_request(req, deployment())
    version = api_version or DEFAULT_API_VERSION
    assert sent.url == (expected if version == "v1" else f"{expected}?api-version={version}")
    assert jsonutil.loads(sent.body or b"") == {"model": "gpt4o-prod", "input": ["a"]}
    assert sent.headers["api-key"] == KEY


def test_v1_api_sends_the_deployment_as_model_and_no_version() -> None:
    req = parse_chat_request(chat_body(), RequestLimits())
    sent = provider(api_version="v1").chat_request(req, deployment("my dep"))
    assert sent.url == f"{ENDPOINT}/openai/v1/chat/completions"
    assert jsonutil.loads(sent.body or b"")["model"] == "my dep"
    deployment_route = provider().chat_request(req, deployment("my dep"))
    assert "/deployments/my%20dep/" in deployment_route.url  # path-escaped


def chunk(choices: list[Any], **extra: Any) -> SSEEvent:
    return SSEEvent(
        json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": choices, **extra})
    )


def test_stream_drops_the_prompt_filter_chunk_and_keeps_the_rest() -> None:
    stream = AzureStream(True, provider())
    opening = chunk([], prompt_filter_results=[{"prompt_index": 0}], model="", object="")
    assert stream.feed(opening) == []
    delta = [{"index": 0, "delta": {"content": "Hi"}, "content_filter_results": {}}]
    assert stream.feed(chunk(delta))[0]["choices"][0]["delta"] == {"content": "Hi"}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert stream.feed(chunk([], usage=usage)) == []  # held for the usage chunk
    assert stream.usage is not None and stream.usage.prompt_tokens == 3
    assert stream.usage_chunk() is not None
    assert stream.feed(SSEEvent("[DONE]")) == [] and stream.done


def test_streams_of_the_provider_are_azure_streams() -> None:
    req = parse_chat_request(chat_body(stream=True), RequestLimits())
    assert isinstance(provider().chat_stream(req, deployment()), AzureStream)


def azure_error(code: str, message: str, **extra: Any) -> bytes:
    return jsonutil.dumps({"error": {"code": code, "message": message, **extra}})


def test_error_mapping() -> None:
    p = provider()
    limited = p.classify_error(
        429, azure_error("429", "Rate limit is exceeded."), {"retry-after-ms": "1500"}
    )
    assert isinstance(limited, UpstreamRateLimitedError) and limited.retry_after_s == 1.5
    filtered = p.classify_error(
        400, azure_error("content_filter", "The response was filtered.", param="prompt"), {}
    )
    assert isinstance(filtered, UpstreamRejectedError) and filtered.status == 400
    assert filtered.to_openai_body()["error"]["code"] == "content_filter"  # type: ignore[index]
    denied = p.classify_error(401, azure_error("401", f"Access denied: key {KEY}"), {})
    assert isinstance(denied, UpstreamAuthError) and KEY not in denied.message
    missing = p.classify_error(404, azure_error("DeploymentNotFound", "no such deployment"), {})
    assert isinstance(missing, UpstreamUnavailableError)  # the next candidate is tried


def test_registry_and_config_check() -> None:
    assert adapter_class("azure") is AzureProvider
    config = parse_config(
        "providers: {az: {kind: azure, api_key: k}}\nmodels: [{name: m, provider: az, model: d}]\n",
        "g",
        {},
    )
    assert reference_problems(config) == ["providers.az.base_url: required for kind azure"]
