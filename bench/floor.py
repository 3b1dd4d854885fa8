"""The Python floor: a bare ASGI pass-through with no feature at all.

Issue 8 measures the gateway against "a bare uvicorn + aiohttp pass-through with no
features". This is that pass-through, run in the same benchmark as the gateway so the
two compare on the same machine: uvicorn (uvloop, httptools, one worker, no access
log) and one pooled aiohttp session, the gateway's own server and transport. It
forwards each request's method, path and body to the upstream and relays the answer,
streamed chunk by chunk. No auth, parsing, routing, cache, metrics or log.

    python -m bench.floor --port P --upstream http://127.0.0.1:U
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from bench.procs import ProcessGroup, start_module

_HOP_HEADERS = {b"content-type", b"cache-control"}


class PassThrough:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self._session is not None
        url = self._upstream + scope["path"]
        async with self._session.post(
            url, data=bytes(body), headers={"content-type": "application/json"}
        ) as upstream:
            headers = [(k, v) for k, v in upstream.raw_headers if k.lower() in _HOP_HEADERS]
            await send(
                {"type": "http.response.start", "status": upstream.status, "headers": headers}
            )
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
                self._session = aiohttp.ClientSession(connector=connector, cookie_jar=None)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def start_floor(group: ProcessGroup, workdir: Path, upstream_origin: str) -> tuple[int, int]:
    """Starts this module as a process in front of `upstream_origin`: (port, pid)."""
    port, proc = start_module(
        group, workdir, "floor", ["--upstream", upstream_origin], "the floor pass-through"
    )
    return port, proc.pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin, e.g. http://127.0.0.1:8080")
    args = parser.parse_args(argv)
    uvicorn.run(
        PassThrough(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
