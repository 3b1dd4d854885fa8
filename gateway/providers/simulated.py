"""The built-in `simulated` provider: deterministic answers with no network and no key.

It is the OpenAI adapter pointed at `simulated://<provider-name>`; the in-process
`SimulatedTransport` answers those URLs in OpenAI's wire format, with configurable
time to first token, per-chunk delay and output length. It makes the embedded
default config useful on a fresh machine, and gives load tests a zero-cost upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from gateway import jsonutil
from gateway.config import ProviderConfig, SimulationConfig
from gateway.errors import UpstreamTimeoutError
from gateway.providers.openai import OpenAIProvider
from gateway.transport import UpstreamRequest, UpstreamResponse, UpstreamStream

_JSON_HEADERS = {"content-type": "application/json"}
_WORDS = ("simulated", "reply", "from", "the", "gateway", "model", "with", "no", "network")


class SimulatedProvider(OpenAIProvider):
    kind: ClassVar[str] = "simulated"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.base_url = f"simulated://{name}"


class _ListStream:
    def __init__(self, lines: AsyncIterator[bytes]) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {"content-type": "text/event-stream"}
        self._lines = lines

    async def read_all(self) -> bytes:
        return b"".join([line async for line in self._lines])

    async def line_batches(self) -> AsyncIterator[list[bytes]]:
        async for blob in self._lines:  # whole events: one "read" each
            yield blob.splitlines(keepends=True)


class SimulatedTransport:
    """Answers `simulated://name/...` requests as an OpenAI server would."""

    def __init__(self, configs: Mapping[str, SimulationConfig]) -> None:
        self._configs = dict(configs)

    def _config(self, url: str) -> SimulationConfig:
        host = url.removeprefix("simulated://").split("/", 1)[0]
        return self._configs.get(host, SimulationConfig())

    async def send(self, req: UpstreamRequest, within_s: float = math.inf) -> UpstreamResponse:
        sim = self._config(req.url)
        body = jsonutil.loads(req.body or b"{}")
        if sim.ttft_s > within_s:  # the request's deadline comes first
            await asyncio.sleep(within_s)
            raise UpstreamTimeoutError("The simulated upstream did not answer in time.")
        await asyncio.sleep(sim.ttft_s)
        if req.url.endswith("/embeddings"):
            return UpstreamResponse(200, _JSON_HEADERS, jsonutil.dumps(_embeddings(body, sim)))
        return UpstreamResponse(200, _JSON_HEADERS, jsonutil.dumps(_completion(body, sim)))

    @asynccontextmanager
    async def stream(self, req: UpstreamRequest) -> AsyncIterator[UpstreamStream]:
        sim = self._config(req.url)
        yield _ListStream(_stream_lines(jsonutil.loads(req.body or b"{}"), sim))

    async def aclose(self) -> None:
        return None


def _reply_words(body: dict[str, Any], sim: SimulationConfig) -> list[str]:
    """Deterministic: the same request always gets the same words."""
    digest = hashlib.sha256(jsonutil.dumps_canonical(body.get("messages"))).digest()
    return [_WORDS[(digest[i % len(digest)] + i) % len(_WORDS)] for i in range(sim.output_tokens)]


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(jsonutil.dumps(body.get("messages"))) // 4)


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """Call the first tool once, unless told not to or a tool result is already there."""
    tools = body.get("tools") or []
    last = (body.get("messages") or [{}])[-1]
    if not tools or body.get("tool_choice") == "none" or last.get("role") == "tool":
        return None
    name = tools[0]["function"]["name"]
    call_id = "call_" + hashlib.sha256(name.encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def _envelope(body: dict[str, Any], kind: str) -> dict[str, Any]:
    digest = hashlib.sha256(jsonutil.dumps_canonical(body.get("messages"))).hexdigest()
    return {
        "id": f"chatcmpl-sim{digest[:20]}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "sim",
    }


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt = _prompt_tokens(body)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _completion(body: dict[str, Any], sim: SimulationConfig) -> dict[str, Any]:
    call = _tool_call(body)
    words = _reply_words(body, sim)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if call else " ".join(words),
        "refusal": None,
    }
    if call:
        message["tool_calls"] = [call]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": "tool_calls" if call else "stop",
    }
    n = body.get("n") or 1
    return {
        **_envelope(body, "chat.completion"),
        "choices": [{**choice, "index": i} for i in range(n)],
        "usage": _usage(body, (1 if call else len(words)) * n),
    }


async def _stream_lines(body: dict[str, Any], sim: SimulationConfig) -> AsyncIterator[bytes]:
    envelope = _envelope(body, "chat.completion.chunk")
    call = _tool_call(body)
    await asyncio.sleep(sim.ttft_s)
    yield _sse({**envelope, "choices": [_delta({"role": "assistant", "content": ""})]})
    if call:
        yield _sse({**envelope, "choices": [_delta({"tool_calls": [{"index": 0, **call}]})]})
    else:
        for index, word in enumerate(_reply_words(body, sim)):
            if index and sim.chunk_delay_s:
                await asyncio.sleep(sim.chunk_delay_s)
            yield _sse(
                {**envelope, "choices": [_delta({"content": (" " if index else "") + word})]}
            )
    finish = "tool_calls" if call else "stop"
    yield _sse({**envelope, "choices": [_delta({}, finish)]})
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        used = 1 if call else sim.output_tokens
        yield _sse({**envelope, "choices": [], "usage": _usage(body, used)})
    yield b"data: [DONE]\n\n"


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + jsonutil.dumps(chunk) + b"\n\n"


def _embeddings(body: dict[str, Any], sim: SimulationConfig) -> dict[str, Any]:
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else list(inputs or [])
    data = []
    for index, item in enumerate(items):
        digest = hashlib.sha256(jsonutil.dumps(item)).digest()
        vector = [(digest[i % len(digest)] - 128) / 128 for i in range(sim.embedding_dimensions)]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = max(1, len(jsonutil.dumps(items)) // 4)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
