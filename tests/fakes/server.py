"""A harness for fake upstreams: real aiohttp servers on 127.0.0.1 in a background thread.

Each fake records what it received (for assertions), counts calls, validates requests
the way the real API would (violations are answered 400 AND recorded, so a test can
assert the gateway never sent anything invalid), and can be scripted per call:

    fake.script(Behaviour(status=500), Behaviour(hang_s=5))   # next two calls
    fake.reset()                                               # between tests
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Behaviour:
    status: int = 200
    body: Any = None  # JSON body for an error status (default: provider-shaped error)
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0  # sleep before answering (timeouts)
    delay_s: float = 0.0  # sleep before the first byte, then answer normally
    chunk_delay_s: float = 0.0
    drop_after_chunks: int | None = None  # streams: cut the connection after N chunks
    drop_before_response: bool = False  # close the socket without answering
    content: str | None = None  # override the reply text
    usage: bool = True  # include usage in the answer
    raw_body: bytes | None = None  # answer 200 with exactly these bytes (malformed bodies)
    stall_body_s: float = 0.0  # send headers and half a JSON body, then stall this long
    first_content_delay_s: float = 0.0  # streams: wait after the role preamble (slow TTFT)
    replace_event: tuple[int, bytes] | None = None  # streams: raw bytes in place of event N
    stall_after_chunks: tuple[int, float] | None = None  # streams: (N, s) stall before event N
    # streams: (N, s) from event N on, only `: keep-alive` comments every s seconds (no
    # event), until the caller hangs up (or KEEPALIVE_ONLY_MAX_S pass: then the end)
    keepalive_only_from: tuple[int, float] | None = None
    # streams: each event in two writes this long apart, cut inside its first multi-byte
    # UTF-8 character (valid UTF-8 that arrives split over reads)
    split_writes_s: float = 0.0
    stalled: bool = False  # set by the fake once it hangs or stalls: a test can wait for it


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: Any
    query: dict[str, str]


Handler = Callable[[web.Request, "FakeServer", Behaviour, Any], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeServer:
    """Subclasses register routes in `routes()` and validate in `validate()`."""

    name = "fake"

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.abandoned = 0  # requests whose caller hung up while we were still working
        self.violations: list[str] = []
        self._script: list[Behaviour] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, self._wrap(handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # --- scripting -------------------------------------------------------------
    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.received.clear()
            self.violations.clear()
            self.abandoned = 0

    @property
    def calls(self) -> int:
        return len(self.received)

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.pop(0) if self._script else Behaviour()

    def behaviour_for(self, body: Any) -> Behaviour:
        """The behaviour for one call: the script's next. Subclasses may choose by the
        request body instead, so concurrent callers each get theirs (soak tests)."""
        return self._next_behaviour()

    # --- request handling ------------------------------------------------------
    def routes(self) -> list[tuple[str, str, Handler]]:
        raise NotImplementedError

    def validate(self, request: web.Request, body: Any) -> list[str]:
        return []

    def error_body(self, status: int) -> Any:
        return {"error": {"message": f"fake error {status}", "type": "server_error"}}

    def _wrap(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                body = await request.json() if request.can_read_body else None
            except ValueError:
                body = None
                self.violations.append("body is not JSON")
            self.received.append(
                Received(request.path, dict(request.headers), body, dict(request.query))
            )
            problems = self.validate(request, body)
            if problems:
                self.violations.extend(problems)
                return web.json_response(self.invalid_body("; ".join(problems)), status=400)
            behaviour = self.behaviour_for(body)
            if behaviour.drop_before_response:
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            if behaviour.hang_s:
                behaviour.stalled = True
                if not await self._sleep_unless_abandoned(request, behaviour.hang_s):
                    return web.Response(status=499)
            if behaviour.status != 200:
                payload = (
                    behaviour.body
                    if behaviour.body is not None
                    else self.error_body(behaviour.status)
                )
                return web.json_response(
                    payload, status=behaviour.status, headers=behaviour.headers
                )
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
            if behaviour.raw_body is not None:
                return web.Response(body=behaviour.raw_body, content_type="application/json")
            if behaviour.stall_body_s:
                return await self._stall_body(request, behaviour)
            try:
                return await handler(request, self, behaviour, body)
            except ConnectionResetError:
                self.abandoned += 1  # the caller hung up mid-answer (mid-stream)
                raise

        return wrapped

    async def _stall_body(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        """Headers and the start of a JSON body go out at once; the rest only after a stall."""
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-stalled", "choices": [')
        behaviour.stalled = True
        if await self._sleep_unless_abandoned(request, behaviour.stall_body_s):
            await response.write(b"]}")
            await response.write_eof()
        return response

    async def _sleep_unless_abandoned(self, request: web.Request, seconds: float) -> bool:
        """Sleep; False (and counted) if the caller closed the connection meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if request.transport is None or request.transport.is_closing():
                self.abandoned += 1
                return False
            await asyncio.sleep(0.02)
        return True

    def invalid_body(self, message: str) -> Any:
        return {"error": {"message": message, "type": "invalid_request_error"}}


async def write_sse(
    request: web.Request, events: list[bytes], behaviour: Behaviour
) -> web.StreamResponse:
    """Send pre-encoded SSE events, honouring chunk delays, mid-stream drops, a slow first
    content event and a raw replacement event."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    if behaviour.replace_event is not None:
        at, raw = behaviour.replace_event
        events = [raw if index == at else event for index, event in enumerate(events)]
    for index, event in enumerate(events):
        if index == 1 and behaviour.first_content_delay_s:
            behaviour.stalled = True
            await _sleep_while_connected(request, behaviour.first_content_delay_s)
        if behaviour.stall_after_chunks is not None and index == behaviour.stall_after_chunks[0]:
            behaviour.stalled = True
            await _sleep_while_connected(request, behaviour.stall_after_chunks[1])
        if behaviour.keepalive_only_from is not None and index == behaviour.keepalive_only_from[0]:
            behaviour.stalled = True
            await _keep_alive_only(request, response, behaviour.keepalive_only_from[1])
            break
        if behaviour.drop_after_chunks is not None and index >= behaviour.drop_after_chunks:
            assert request.transport is not None
            request.transport.close()  # an abrupt end: no terminator, no clean close
            return response
        if index and behaviour.chunk_delay_s:
            await asyncio.sleep(behaviour.chunk_delay_s)
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the caller closed the stream")
        if behaviour.split_writes_s:
            cut = next((i + 1 for i, byte in enumerate(event) if byte >= 0x80), len(event) // 2)
            await response.write(event[:cut])
            await asyncio.sleep(behaviour.split_writes_s)
            event = event[cut:]
        await response.write(event)
    await response.write_eof()
    return response


KEEPALIVE_ONLY_MAX_S = 60.0


async def _keep_alive_only(
    request: web.Request, response: web.StreamResponse, every_s: float
) -> None:
    """SSE comments only (what proxies and some servers send to keep a stream open),
    until the caller hangs up: ConnectionResetError (counted as abandoned) then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KEEPALIVE_ONLY_MAX_S
    while loop.time() < deadline:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the caller closed the stream")
        await response.write(b": keep-alive\n\n")
        await _sleep_while_connected(request, every_s)


async def _sleep_while_connected(request: web.Request, seconds: float) -> None:
    """Sleep; ConnectionResetError (counted as abandoned) as soon as the caller hangs up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the caller closed the stream")
        await asyncio.sleep(0.02)
