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


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()  # we were cancelled ourselves (shutdown): take the work with us
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnectedError
