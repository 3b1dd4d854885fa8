"""A paced fake upstream (aiohttp): time to first token, then N chunks at an interval.

nginx answers at once; this one behaves like a model server generating tokens, for
the many-concurrent-streams scenario. Run as its own process:

    python -m bench.slow_upstream --port P [--ttft-ms 200 --chunks 20 --interval-ms 50]

`POST /v1/chat/completions` with `stream: true` sends the headers at once, the role
chunk and first word after `ttft-ms`, one word every `interval-ms` after that, then
the finish chunk, the usage chunk (when asked) and `[DONE]`. Without `stream` it
answers the whole completion after ttft + chunks x interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from aiohttp import web

from bench.nginx import Upstream, chat_completion
from bench.procs import ProcessGroup, start_module

_CREATED = 1_700_000_000


def _event(model: str, delta: dict[str, object], finish: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _usage_event(model: str, chunks: int) -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    chunk = {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "choices": [],
        "usage": usage,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


class Pacing:
    def __init__(self, ttft_s: float, chunks: int, interval_s: float) -> None:
        self.ttft_s = ttft_s
        self.chunks = chunks
        self.interval_s = interval_s

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model") or "slow-model")
        if not body.get("stream"):
            await asyncio.sleep(self.ttft_s + self.chunks * self.interval_s)
            return web.json_response(chat_completion(model))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(self.ttft_s)
        await response.write(_event(model, {"role": "assistant", "content": ""}, None))
        for index in range(self.chunks):
            if index:
                await asyncio.sleep(self.interval_s)
            await response.write(_event(model, {"content": f" word{index}"}, None))
        tail = _event(model, {}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += _usage_event(model, self.chunks)
        await response.write(tail + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def start_paced(
    group: ProcessGroup, workdir: Path, ttft_ms: float, chunks: int, interval_ms: float
) -> Upstream:
    """Starts this module as a process; streams are served at the base URL itself."""
    args = ["--ttft-ms", str(ttft_ms), "--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    port, _ = start_module(group, workdir, "slow_upstream", args, "the paced upstream")
    return Upstream(port, stream_prefix="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=200)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=50)
    args = parser.parse_args(argv)
    pacing = Pacing(args.ttft_ms / 1000, args.chunks, args.interval_ms / 1000)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # plain asyncio still works, only slower
        pass
    app = web.Application()
    app.router.add_post("/v1/chat/completions", pacing.handle)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=4096, print=None, access_log=None)


if __name__ == "__main__":
    main()
