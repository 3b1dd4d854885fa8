"""Stop upstream work the moment the client goes away (rule 6), before the first byte too.

Starlette cancels a streaming body when the client disconnects, but a handler that
is still waiting on the upstream (a non-streaming call, or a stream before its
commit point) would run to the end. `until_disconnect` races the work against the
ASGI `http.disconnect` message and cancels the work if the client left first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientDisconnectedError(Exception):
    """The client closed the connection while the gateway was still working."""


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# The watcher starts this long after the work: most answers from a nearby upstream (or
# a cache) come sooner and never pay for a task, and a client that left is still
# noticed within this delay plus one event-loop turn (rule 6 allows a second).
WATCH_AFTER_S = 0.02


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    # The work runs in this task (no second task, no asyncio.wait): a watcher task
    # cancels this one if the client leaves first, and that cancel alone is converted.
    this = asyncio.current_task()
    assert this is not None
    left = False
    watcher: asyncio.Future[None] | None = None

    def client_left(done: asyncio.Future[None]) -> None:
        nonlocal left
        if not done.cancelled() and done.exception() is None:
            left = True
            this.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        watcher.add_done_callback(client_left)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if left and this.uncancel() == 0:  # ours alone; a shutdown's cancel goes on
            raise ClientDisconnectedError from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(client_left)
            watcher.cancel()
