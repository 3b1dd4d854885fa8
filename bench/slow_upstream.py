"""A paced fake upstream: time to first token, then N chunks at an interval.

nginx answers at once; this one behaves like a model server generating tokens, for
the many-concurrent-streams scenario. Run as its own process:

    python -m bench.slow_upstream --port P [--ttft-ms 200 --chunks 20 --interval-ms 50]

`POST /v1/chat/completions` with `stream: true` sends the headers at once, the role
chunk and first word after `ttft-ms`, one word every `interval-ms` after that, then
the finish chunk, the usage chunk (when asked) and `[DONE]`, each event one HTTP/1.1
chunk. Without `stream` it answers the whole completion after ttft + chunks x interval.

It shares the benchmark's two cores with the gateway and wrk, so it is built to cost
little: a bare asyncio protocol on uvloop, events encoded once per model, and each
stream driven by timer callbacks rather than a coroutine. (The aiohttp server it
replaced used about as much CPU per stream as the gateway, and even called directly
it fell short of the ideal rate at 1,000 streams.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from functools import cache
from pathlib import Path
from typing import cast

from bench.nginx import Upstream, chat_completion
from bench.procs import ProcessGroup, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent

_CREATED = 1_700_000_000
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_MAX_HEAD = 64 * 1024


def _sse(chunk: dict[str, object]) -> bytes:
    data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)  # one HTTP/1.1 chunk per event


def _chunk(model: str, delta: dict[str, object], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


@cache
def _events(model: str, chunks: int, usage: bool) -> tuple[bytes, ...]:
    """What one stream sends after its head: one item per timer tick, the end included."""
    first = _sse(_chunk(model, {"role": "assistant", "content": ""}, None))
    words = [_sse(_chunk(model, {"content": f" word{i}"}, None)) for i in range(chunks)]
    words[0] = first + words[0]
    tail = _sse(_chunk(model, {}, "stop"))
    if usage:
        counts = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        tail += _sse({**_chunk(model, {}, None), "choices": [], "usage": counts})
    words[-1] += tail + _sse_done()
    return tuple(words)


def _sse_done() -> bytes:
    data = b"data: [DONE]\n\n"
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


@cache
def _completion(model: str) -> bytes:
    body = json.dumps(chat_completion(model), separators=(",", ":")).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


class Pacing:
    def __init__(self, ttft_s: float, chunks: int, interval_s: float) -> None:
        self.ttft_s = ttft_s
        self.chunks = chunks
        self.interval_s = interval_s


class PacedConnection(asyncio.Protocol):
    """One keep-alive connection: requests one after the other, each answered on timers."""

    def __init__(self, pacing: Pacing) -> None:
        self._pacing = pacing
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next_request()

    def _next_request(self) -> None:
        if self._busy or self._transport is None:
            return
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._transport.close()
            return
        length = _content_length(bytes(self._buffer[:head_end]))
        end = head_end + 4 + length
        if len(self._buffer) < end:
            return
        body = json.loads(bytes(self._buffer[head_end + 4 : end]))
        del self._buffer[:end]
        self._busy = True
        self._answer(body)

    def _answer(self, body: dict[str, object]) -> None:
        loop = asyncio.get_running_loop()
        pacing, model = self._pacing, str(body.get("model") or "slow-model")
        if not body.get("stream"):
            wait_s = pacing.ttft_s + pacing.chunks * pacing.interval_s
            self._timer = loop.call_later(wait_s, self._send_whole, _completion(model))
            return
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        assert self._transport is not None
        self._transport.write(_STREAM_HEAD)
        events = _events(model, pacing.chunks, usage)
        self._timer = loop.call_later(pacing.ttft_s, self._send_event, events, 0)

    def _send_event(self, events: tuple[bytes, ...], index: int) -> None:
        if self._transport is None:
            return
        self._transport.write(events[index])
        if index + 1 < len(events):
            loop, interval_s = asyncio.get_running_loop(), self._pacing.interval_s
            self._timer = loop.call_later(interval_s, self._send_event, events, index + 1)
        else:
            self._done()

    def _send_whole(self, answer: bytes) -> None:
        if self._transport is not None:
            self._transport.write(answer)
            self._done()

    def _done(self) -> None:
        self._timer, self._busy = None, False
        self._next_request()  # a request that came in meanwhile on this connection


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def start_paced(
    group: ProcessGroup, workdir: Path, ttft_ms: float, chunks: int, interval_ms: float
) -> Upstream:
    """Starts this module as a process; streams are served at the base URL itself."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.slow_upstream", "--port", str(port)]
    cmd += ["--ttft-ms", str(ttft_ms), "--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = group.start("paced-upstream", cmd, workdir / f"paced-{port}.log", env=env, cwd=REPO)
    wait_for_port(port, proc, 20, "the paced upstream")
    return Upstream(port, stream_prefix="")


async def serve(port: int, pacing: Pacing) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: PacedConnection(pacing), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


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
    try:
        asyncio.run(serve(args.port, pacing))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
