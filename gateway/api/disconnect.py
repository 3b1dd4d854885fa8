"""Stop upstream work the moment the client goes away (rule 6), before the first byte too.

A handler still waiting on the upstream (a non-streaming call, or a stream before its
commit point) would otherwise run to the end, and so would a stream being relayed:
uvicorn drops what is sent to a departed client without a word. `DisconnectWatch`
cancels the task doing the work when the client leaves: told by the gateway's own
HTTP protocol (`hook_client_gone`: an attribute set per request, nothing else), or,
under another server, by reading the ASGI `http.disconnect` message in a watcher
task. `until_disconnect` turns that cancel into `ClientDisconnectedError`, and
`SSEResponse` (gateway.api.sse_response) into closing the stream's body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from gateway.api.http_protocol import RequestResponseCycle, hook_client_gone, unhook_client_gone

T = TypeVar("T")

# Under another server, a request's watcher task starts this long after its work:
# most answers from a nearby upstream (or a cache) come sooner and never pay for a
# task, and a client that left is still noticed within this delay plus one event-loop
# turn (rule 6 allows a second).
WATCH_AFTER_S = 0.02


class ClientDisconnectedError(Exception):
    """The client closed the connection while the gateway was still working."""


class DisconnectWatch:
    """Cancels the task that created it when the client disconnects.

    The work runs in that task (no second task for it, no `asyncio.wait`); on a
    CancelledError, `is_ours()` tells this watch's cancel from any other (a shutdown's
    goes on) and consumes it.
    """

    __slots__ = ("_task", "_receive", "_left", "_watcher", "_timer", "_hooked")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._left = False
        self._watcher: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._hooked: RequestResponseCycle | None = None

    def start(self, after_s: float = 0.0) -> None:
        self._hooked = hook_client_gone(self._receive, self._client_gone)
        if self._hooked is not None:
            return
        if after_s > 0:
            self._timer = asyncio.get_running_loop().call_later(after_s, self._watch)
        else:
            self._watch()

    def is_ours(self) -> bool:
        """On a CancelledError: the client left, and no other cancel is pending."""
        return self._left and self._task.uncancel() == 0

    def stop(self) -> None:
        if self._hooked is not None:
            unhook_client_gone(self._hooked)
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.remove_done_callback(self._client_left)
            self._watcher.cancel()

    def _watch(self) -> None:
        self._watcher = asyncio.ensure_future(_wait_disconnect(self._receive))
        self._watcher.add_done_callback(self._client_left)

    def _client_left(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            self._client_gone()

    def _client_gone(self) -> None:
        self._left = True
        self._task.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    watch = DisconnectWatch(request.receive)
    watch.start(after_s=WATCH_AFTER_S)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.is_ours():
            raise ClientDisconnectedError from None
        raise
    finally:
        watch.stop()
