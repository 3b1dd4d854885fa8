"""A fake OpenAI server: `/v1/chat/completions` (JSON and SSE), `/v1/embeddings` and
`/v1/responses` (tests.fakes.openai_responses).

It checks what the real API checks (bearer key, model, messages shape, tool
messages that answer a preceding tool call, stream_options only with stream) and
also what a gateway must never send it (the client's key, cookies, forbidden fields).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.openai_responses import responses_handler, responses_problems
from tests.fakes.server import Behaviour, FakeServer, Handler, write_sse

FORBIDDEN_HEADERS = ("cookie", "openai-organization", "openai-project", "x-forwarded-for")
TOOL_ARGUMENTS = '{"city": "Paris"}'


class FakeOpenAI(FakeServer):
    name = "openai"

    def __init__(self, api_key: str = "sk-fake-openai-key", prefix: str = "/v1") -> None:
        super().__init__()
        self.api_key = api_key
        self.prefix = prefix
        self.reply = "Hello from the fake OpenAI."
        self.prompt_tokens = 11
        self.completion_tokens = 7
        self.cached_tokens = 0  # > 0: usage reports prompt_tokens_details.cached_tokens

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", f"{self.prefix}/chat/completions", _chat),
            ("POST", f"{self.prefix}/embeddings", _embeddings),
            ("POST", f"{self.prefix}/responses", _responses),
        ]

    def validate(self, request: web.Request, body: Any) -> list[str]:
        problems = []
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            problems.append(f"bad authorization header: {request.headers.get('authorization')!r}")
        problems += [f"forwarded header {h}" for h in FORBIDDEN_HEADERS if h in request.headers]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return [*problems, "model missing"]
        if request.path.endswith("/embeddings"):
            return problems + ([] if body.get("input") else ["input missing"])
        if request.path.endswith("/responses"):
            return problems + responses_problems(body)
        return problems + _chat_problems(body)

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


def _chat_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["messages missing"]
    pending: set[str] = set()
    for message in messages:
        if message.get("role") == "assistant":
            pending |= {c["id"] for c in message.get("tool_calls") or []}
        if message.get("role") == "tool" and message.get("tool_call_id") not in pending:
            problems.append("tool message without a preceding tool call")
    if body.get("stream_options") and not body.get("stream"):
        problems.append("stream_options is only allowed with stream")
    for forbidden in ("api_base", "base_url", "api_key"):
        if forbidden in body:
            problems.append(f"forwarded field {forbidden}")
    return problems


def _wants_tool(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    return bool(body.get("tools")) and body.get("tool_choice") != "none" and last["role"] != "tool"


def _envelope(fake: FakeOpenAI, body: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake123",
        "object": kind,
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_fake",
    }


def _tool_call(body: dict[str, Any]) -> dict[str, Any]:
    name = body["tools"][0]["function"]["name"]
    return {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": name, "arguments": TOOL_ARGUMENTS},
    }


async def _chat(
    request: web.Request, fake: FakeServer, b: Behaviour, body: Any
) -> web.StreamResponse:
    assert isinstance(fake, FakeOpenAI)
    if body.get("stream"):
        return await write_sse(request, _stream_events(fake, body, b), b)
    tool = _wants_tool(body)
    message: dict[str, Any] = {
        "role": "assistant",
        "refusal": None,
        "content": None if tool else (b.content or fake.reply),
    }
    if tool:
        message["tool_calls"] = [_tool_call(body)]
    out = {
        **_envelope(fake, body, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool else "stop",
            }
        ],
    }
    if b.usage:
        out["usage"] = fake.usage()
    return web.json_response(
        out, headers={"set-cookie": "upstream=secret", "openai-organization": "org-fake"}
    )


def _stream_events(fake: FakeOpenAI, body: dict[str, Any], b: Behaviour) -> list[bytes]:
    env = _envelope(fake, body, "chat.completion.chunk")
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {
            **env,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            out["usage"] = None
        return out

    chunks = [chunk({"role": "assistant", "content": ""})]
    if _wants_tool(body):
        call = _tool_call(body)
        args = call["function"]["arguments"]
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        for part in (args[: len(args) // 2], args[len(args) // 2 :]):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        for word in (b.content or fake.reply).split(" "):
            chunks.append(chunk({"content": word + " "}))
        chunks.append(chunk({}, "stop"))
    if with_usage and b.usage:
        chunks.append({**env, "choices": [], "usage": fake.usage()})
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
    return [*events, b"data: [DONE]\n\n"]


async def _responses(
    request: web.Request, fake: FakeServer, b: Behaviour, body: Any
) -> web.StreamResponse:
    assert isinstance(fake, FakeOpenAI)
    return await responses_handler(request, fake, b, body)


async def _embeddings(
    request: web.Request, fake: FakeServer, b: Behaviour, body: Any
) -> web.StreamResponse:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
        for i in range(len(inputs))
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )
