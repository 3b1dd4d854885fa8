"""A fake Azure OpenAI resource: the fake OpenAI's answers behind Azure's URLs and auth.

    POST /openai/deployments/{deployment}/chat/completions?api-version=...
    POST /openai/deployments/{deployment}/embeddings?api-version=...
    POST /openai/v1/chat/completions, /openai/v1/embeddings   (the versionless v1 API)

On top of the OpenAI checks on the body it rejects (and records) what Azure rejects: a
wrong or missing `api-key` header, any `Authorization` header (the gateway must use
api-key), a missing or unknown `api-version` on the deployment routes (and any on v1),
and a deployment that does not exist on this resource. Streams open with Azure's
choice-less `prompt_filter_results` chunk and carry `content_filter_results` in every
choice, as the real service does.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes.openai_fake import (
    FORBIDDEN_HEADERS,
    FakeOpenAI,
    _chat,
    _chat_problems,
    _embeddings,
    _stream_events,
)
from tests.fakes.server import Behaviour, FakeServer, Handler, write_sse

API_VERSIONS = ("2024-10-21", "2024-06-01", "2025-04-01-preview")
PROMPT_FILTER = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            "hate": {"filtered": False, "severity": "safe"},
            "violence": {"filtered": False, "severity": "safe"},
        },
    }
]


class FakeAzure(FakeOpenAI):
    name = "azure"

    def __init__(self, api_key: str = "azure-fake-key", deployments: tuple[str, ...] = ()) -> None:
        super().__init__(api_key=api_key, prefix="/openai")
        self.deployments = set(deployments)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/openai/deployments/{deployment}/chat/completions", _azure_chat),
            ("POST", "/openai/deployments/{deployment}/embeddings", _embeddings),
            ("POST", "/openai/v1/chat/completions", _azure_chat),
            ("POST", "/openai/v1/embeddings", _embeddings),
        ]

    def validate(self, request: web.Request, body: Any) -> list[str]:
        problems = [f"forwarded header {h}" for h in FORBIDDEN_HEADERS if h in request.headers]
        if "authorization" in request.headers:
            problems.append("Authorization header sent; Azure keys go in api-key")
        if request.headers.get("api-key") != self.api_key:
            problems.append("Access denied due to invalid subscription key (api-key).")
        problems += self._route_problems(request)
        if not isinstance(body, dict):
            return [*problems, "body must be a JSON object"]
        if request.path.endswith("/embeddings"):
            return problems + ([] if body.get("input") else ["input missing"])
        return problems + _chat_problems(body)

    def _route_problems(self, request: web.Request) -> list[str]:
        version = request.query.get("api-version")
        if request.path.startswith("/openai/v1/"):
            return [] if version is None else ["api-version is not used on the v1 API"]
        problems = []
        if version not in API_VERSIONS:
            problems.append(f"Unsupported api-version {version!r}")
        deployment = request.match_info.get("deployment")
        if deployment not in self.deployments:
            problems.append(f"DeploymentNotFound: {deployment!r}")
        return problems

    def error_body(self, status: int) -> Any:
        return {"error": {"code": str(status), "message": f"fake Azure error {status}"}}


async def _azure_chat(
    request: web.Request, fake: FakeServer, b: Behaviour, body: Any
) -> web.StreamResponse:
    assert isinstance(fake, FakeAzure)
    if not body.get("stream"):
        return await _chat(request, fake, b, body)
    events = [_filtered(event) for event in _stream_events(fake, body, b)]
    opening = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
    opening["prompt_filter_results"] = PROMPT_FILTER
    return await write_sse(request, [_sse(opening), *events], b)


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _filtered(event: bytes) -> bytes:
    """Azure adds content_filter_results to every choice of every chunk."""
    payload = event.decode().removeprefix("data: ").strip()
    if payload == "[DONE]":
        return event
    chunk = json.loads(payload)
    for choice in chunk.get("choices") or ():
        choice["content_filter_results"] = {}
    return _sse(chunk)
