"""uvicorn's httptools protocol with a bound on the request line plus headers (rule 14).

httptools itself accepts headers of any size (megabytes, thousands of them) and keeps
them in memory. This counts both the raw bytes received while the head is incomplete
(a never-ending header value) and the parsed url and headers, and answers an
OpenAI-shaped 431 with `connection: close` past `server.max_header_bytes`. uvicorn passes
that bound in its `h11_max_incomplete_event_size` setting, the field it uses for the
same bound with h11 (a plain int survives the hand-over to worker processes).

It also sends a response's head and the first piece of its body in one write
(`HeadWithBody`): uvicorn writes the head on its own, one more system call per
response, which is a few percent of the gateway's CPU on a virtual machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import jsonutil

DEFAULT_MAX_HEADER_BYTES = 32 * 1024


class HeadersTooLargeError(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0  # parsed: url, names and values
    _raw_bytes = 0  # received while the head is incomplete
    _in_head = False
    _too_large = False

    @property
    def _limit(self) -> int:
        return self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._raw_bytes += len(data)  # the head is still arriving: bound the buffer
            if self._raw_bytes > self._limit:
                self._send_431()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._raw_bytes, self._in_head = 0, 0, True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope["method"] != "HEAD":
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limit:
            self._too_large = True
            raise HeadersTooLargeError  # httptools stops; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._send_431()
        else:
            super().send_400_response(msg)

    def _send_431(self) -> None:
        error = {
            "message": f"Request headers are larger than {self._limit} bytes.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_header_fields_too_large",
        }
        body = jsonutil.dumps({"error": error})
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self._default_headers()]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _default_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.server_state.default_headers)


class HeadWithBody:
    """A request's view of the transport: holds its first write (the response head, or
    a 100 Continue) until the next write, or the end of this event-loop turn at the
    latest, and sends both at once. Everything else goes straight to the transport."""

    __slots__ = ("_transport", "_held", "_first")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            asyncio.get_running_loop().call_soon(self.flush)  # a head with no body write
            return
        held, self._held = self._held, None
        self._transport.write(data if held is None else held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
