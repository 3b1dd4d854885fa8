"""Azure OpenAI: the OpenAI wire format behind a deployment URL, an api-version and an api-key.

    {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}
    {base_url}/openai/deployments/{deployment}/embeddings?api-version={api_version}

`base_url` is the resource endpoint (`https://{resource}.openai.azure.com`; a trailing
`/openai` is tolerated), the deployment is the model config's `model`, and
`api_version` defaults to the latest GA data-plane version. `api_version: v1` selects
Azure's versionless v1 API instead (`{base_url}/openai/v1/chat/completions`, the
deployment name sent as `model`). The key travels in the `api-key` header, never as
`Authorization`. Bodies are OpenAI's, unchanged (Azure ignores `model` on the
deployment routes and needs it on v1).

Azure streams open with a chunk that has no choices, only `prompt_filter_results`; it
is not part of OpenAI's stream, so it is dropped here.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from gateway.config import Deployment
from gateway.providers.openai import OpenAIProvider, OpenAIStream
from gateway.types import ChatRequest, JSONObject, SSEEvent

DEFAULT_API_VERSION = "2024-10-21"  # latest GA of the Azure OpenAI data-plane inference API
V1_API = "v1"


class AzureProvider(OpenAIProvider):
    kind: ClassVar[str] = "azure"

    @property
    def api_version(self) -> str:
        return self.config.api_version or DEFAULT_API_VERSION

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self.api_key} if self.api_key else {}

    def chat_url(self, d: Deployment) -> str:
        return self.operation_url(d, "chat/completions")

    def embeddings_url(self, d: Deployment) -> str:
        return self.operation_url(d, "embeddings")

    def operation_url(self, d: Deployment, operation: str) -> str:
        endpoint = self.base_url.removesuffix("/openai")
        if self.api_version == V1_API:
            return f"{endpoint}/openai/v1/{operation}"
        deployment = quote(d.model, safe="")
        return (
            f"{endpoint}/openai/deployments/{deployment}/{operation}"
            f"?api-version={quote(self.api_version, safe='')}"
        )

    def chat_stream(self, req: ChatRequest, d: Deployment) -> AzureStream:
        return AzureStream(req.include_usage, self)


class AzureStream(OpenAIStream):
    """OpenAI's stream minus Azure's choice-less prompt-filter chunks."""

    __slots__ = ()

    def feed(self, event: SSEEvent) -> list[JSONObject]:
        return [chunk for chunk in super().feed(event) if chunk.get("choices")]


__all__ = ["DEFAULT_API_VERSION", "AzureProvider", "AzureStream"]
