"""uvicorn's httptools protocol with a bound on the request line plus headers (rule 14).

httptools itself accepts headers of any size (megabytes, thousands of them) and keeps
them in memory. This counts both the raw bytes received while the head is incomplete
(a never-ending header value) and the parsed url and headers, and answers an
OpenAI-shaped 431 with `connection: close` past `server.max_header_bytes`. uvicorn passes
that bound in its `h11_max_incomplete_event_size` setting, the field it uses for the
same bound with h11 (a plain int survives the hand-over to worker processes).

`write_whole_response` writes a finished response (head and body known) in one go,
as uvicorn's `send` would in two ASGI messages: without the two message dicts, two
coroutine calls, and two regular-expression searches per header (two table lookups
over all names and all values instead). About a twentieth of a request's CPU.

`hook_client_gone` tells a request the moment its client disconnects, from the
protocol's `connection_lost`, instead of a watcher task reading `receive` (rule 6).

It also coalesces a connection's writes (`CoalescedWrites`): uvicorn writes a
response's head on its own and each piece of a chunked body with its framing, and a
stream's end (`[DONE]`, then the chunked terminator) as two more writes. Each is a
system call, a few percent of the gateway's CPU each on a virtual machine. Held writes
go out together when the response completes, or at the end of the event-loop turn.

An upgrade request the gateway does not speak (`Upgrade: h2c`, which Java's HttpClient
sends on its first cleartext request) is served as the plain HTTP/1.1 request it also is,
body included: llhttp stops at the end of such a request's head and hands the rest over
as the new protocol's bytes, and uvicorn would serve the request without its body
(uvicorn issue 2722).

This is the one module that reaches into uvicorn's internals (its httptools protocol and
request cycle). `missing_uvicorn_internals` lists what it needs that the installed uvicorn
lacks; `protocol_setting` then has uvicorn serve with its stock h11 protocol instead
(slower; it still bounds the head, with a 400 instead of a 431).
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from typing import Any

import httptools
import uvicorn.config
import uvicorn.server
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as RequestResponseCycle

from gateway import jsonutil

Header = tuple[bytes, bytes]  # a raw response header: (lower-case name, value)
_CLIENT_GONE = "gateway_client_gone"  # a request cycle's callback for connection_lost
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
_TOKEN_CHARS = (string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~").encode()
_CONTROL_CHARS = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
FLUSH_AT_BYTES = 64 * 1024  # held writes past this go out at once
_CLOSE: Header = (b"connection", b"close")
STATUS_LINE: dict[int, bytes] = getattr(httptools_impl, "STATUS_LINE", {})
# What `uvicorn --http` names for each case (see `protocol_setting`).
GATEWAY_PROTOCOL = "gateway.api.http_protocol:BoundedHttpToolsProtocol"
STOCK_PROTOCOL = "h11"


class HeadersTooLargeError(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0  # parsed: url, names and values
    _raw_bytes = 0  # received while the head is incomplete
    _in_head = False
    _too_large = False
    _idle_since: float | None = None  # loop time of the last response; None while busy

    _limit = DEFAULT_MAX_HEADER_BYTES  # the configured bound, set per connection

    def data_received(self, data: bytes) -> None:
        """uvicorn's, except for an upgrade to a protocol the gateway does not speak:
        served as plain HTTP/1.1, body included (uvicorn drops the body and stalls)."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():  # a websocket, with a websocket library: uvicorn's
                self.handle_websocket_upgrade()
            else:
                self._serve_upgrade_as_http(data[upgrade.args[0] :])
            return
        if self._in_head and not self.transport.is_closing():
            self._raw_bytes += len(data)  # the head is still arriving: bound the buffer
            if self._raw_bytes > self._limit:
                self._send_431()

    def _serve_upgrade_as_http(self, rest: bytes) -> None:
        """llhttp stopped at the end of an upgrade request's head and has already called
        `on_message_complete`; `rest` is everything after the head. The request's body
        is read by a parser of its own, which then goes on with the connection's next
        requests (llhttp offers no way back into a body once it has passed it)."""
        framing = _body_framing(self.headers)
        if framing is None:  # no body: the request is whole; llhttp goes on after it
            if rest:
                self.data_received(rest)
            return
        cycle = self.cycle
        cycle.more_body = True  # undo the early end (its task has not run yet)
        cycle.message_event.clear()
        self.parser = httptools.HttpRequestParser(_AfterUpgradeHead(self))
        self.data_received(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + rest)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._raw_bytes, self._in_head = 0, 0, True

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self._limit:
            self._head_too_large()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limit:
            self._head_too_large()
        super().on_header(name, value)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        self._stop_keep_alive()
        gone = getattr(cycle, _CLIENT_GONE, None)
        if gone is not None and cycle.disconnected:
            setattr(cycle, _CLIENT_GONE, None)
            gone()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        # Every write of this connection, uvicorn's own error answers included, goes
        # through the one buffer, so nothing can overtake a held write.
        self.transport = CoalescedWrites(transport)  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, except for its keep-alive timer: uvicorn arms a timer after every
        response and cancels it at the next request's first bytes (a timer made and
        dropped per request). Here a connection has at most one, and when it fires
        early (the connection was busy since) it is armed again for what is left."""
        self.transport.flush()  # type: ignore[attr-defined]  # the whole answer is held: out
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self._arm_keep_alive(self.timeout_keep_alive)

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # busy: a timer due meanwhile finds it so and lets go

    def _arm_keep_alive(self, delay_s: float) -> None:
        self.timeout_keep_alive_task = self.loop.call_later(delay_s, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # busy: the response's completion arms it again
        left_s = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left_s > 0:
            self._arm_keep_alive(left_s)
        else:
            self.timeout_keep_alive_handler()

    def _stop_keep_alive(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _head_too_large(self) -> None:
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
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        self.transport.write(_response_bytes(431, headers, body))
        self.transport.close()


def _body_framing(headers: list[Header]) -> bytes | None:
    """The header that frames a request's body, or None when it has none."""
    for name, value in headers:
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return b"transfer-encoding: chunked"
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit() and int(value) > 0:
            return b"content-length: %d" % int(value)
    return None


class _AfterUpgradeHead:
    """The callbacks of the parser that takes over a connection after an upgrade request
    the gateway serves as plain HTTP: it is fed a head of its own (swallowed here) that
    frames the request's body as its head declared, then the rest of the connection.
    The body and everything after it reach the protocol as from its first parser."""

    __slots__ = ("_protocol", "_in_own_head")

    def __init__(self, protocol: BoundedHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._in_own_head = True

    def on_message_begin(self) -> None:
        if not self._in_own_head:
            self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._in_own_head:
            self._protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_own_head:
            self._protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._in_own_head:
            self._in_own_head = False
        else:
            self._protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._protocol.on_body(body)

    def on_message_complete(self) -> None:
        self._protocol.on_message_complete()


class CoalescedWrites:
    """A connection's transport whose writes are held, then sent in one system call:
    by `flush` (the response completed), at the end of this event-loop turn at the
    latest, or at once past `FLUSH_AT_BYTES` (so the transport's flow control still
    sees a large body). `close` sends what is held first; everything else is the
    transport's own."""

    __slots__ = ("_transport", "_held", "_held_bytes", "_scheduled")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_AT_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn_ended)

    def write_now(self, data: bytes) -> None:
        """`data` goes out at once, after what is held (one system call for both)."""
        if self._held:
            self._held.append(data)
            self.flush()
        elif not self._transport.is_closing():
            self._transport.write(data)

    def _turn_ended(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held, self._held_bytes = self._held, [], 0
        if self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)  # one writev under uvloop, no copy

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def write_whole_response(
    send: Callable[..., Awaitable[None]],
    status: int,
    headers: list[Header],
    body: bytes,
) -> bool:
    """The response written at once if `send` is a uvicorn request cycle's, in the
    plain case; False when it is not (then send it as ASGI messages): another server,
    a paused write side (ASGI's send waits for it to drain), a HEAD request, uvicorn's
    access log on, or a `connection` header to interpret. `headers` are lower case and
    carry the body's content-length (gateway.api.deps.BytesResponse's do).
    """
    cycle = getattr(send, "__self__", None)
    if (
        type(cycle) is not RequestResponseCycle
        or not headers  # none would leave the head's end to the body: not the plain case
        or cycle.response_started
        or cycle.flow.write_paused
        or cycle.access_log
        or cycle.scope["method"] == "HEAD"
    ):
        return False
    names = b"".join([name for name, _ in headers])
    if b"connection" in names:
        return False
    # Joined, each check sees what it would see header by header: names are tokens
    # (RFC 9110), values hold no control characters but tab (as uvicorn's checks).
    if names.translate(None, _TOKEN_CHARS):
        raise RuntimeError("Invalid HTTP header name.")
    values = b"".join([value for _, value in headers])
    if len(values.translate(None, _CONTROL_CHARS)) != len(values):
        raise RuntimeError("Invalid HTTP header value.")
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.disconnected:
        return True  # as uvicorn does: nobody to send it to
    transport: Any = cycle.transport  # a CoalescedWrites under the gateway's protocol
    # The response is complete: out now, not at the end of the turn (a callback less).
    write = transport.write_now if type(transport) is CoalescedWrites else transport.write
    if cycle.keep_alive:
        write(_response_bytes(status, [*cycle.default_headers, *headers], body))
    else:
        write(_response_bytes(status, [*cycle.default_headers, *headers, _CLOSE], body))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def _response_bytes(status: int, headers: list[Header], body: bytes) -> bytes:
    """A whole HTTP/1.1 response: status line, one `name: value` line per header (at
    least one), the blank line, the body."""
    lines = b"\r\n".join([b": ".join(header) for header in headers])
    return b"".join((STATUS_LINE[status], lines, b"\r\n\r\n", body))


def hook_client_gone(
    receive: Callable[..., Awaitable[Any]], callback: Callable[[], None]
) -> RequestResponseCycle | None:
    """Has `callback` called from the connection's own `connection_lost` the moment the
    client of this request goes away: no watcher task and no timer per request. Returns
    the request cycle to `unhook_client_gone` later; None when `receive` is not a cycle
    of this protocol, or its client has already gone (the caller watches `receive`)."""
    cycle = getattr(receive, "__self__", None)
    if (
        type(cycle) is not RequestResponseCycle
        or cycle.disconnected
        or getattr(cycle, _CLIENT_GONE, None) is not None  # another watch holds it
        or not isinstance(getattr(cycle.on_response, "__self__", None), BoundedHttpToolsProtocol)
    ):
        return None
    setattr(cycle, _CLIENT_GONE, callback)
    return cycle


def body_buffered(receive: Callable[..., Awaitable[Any]]) -> bool:
    """True when `receive` is a cycle of this protocol whose request body has arrived
    whole (reading it cannot wait); False when it may wait, or is not known."""
    cycle = getattr(receive, "__self__", None)
    return type(cycle) is RequestResponseCycle and not cycle.more_body


def unhook_client_gone(cycle: RequestResponseCycle) -> None:
    setattr(cycle, _CLIENT_GONE, None)


# uvicorn internals this module uses beyond uvicorn's public API: per owner, the names it
# must have (module names, methods) and the instance fields its own code must set or read
# (uvicorn assigns them in __init__ or connection_made, so the class itself has none).
_INTERNALS: tuple[tuple[Any, tuple[str, ...], tuple[str, ...]], ...] = (
    (httptools_impl, ("STATUS_LINE", "HttpToolsProtocol", "RequestResponseCycle"), ()),
    (
        HttpToolsProtocol,
        (
            "data_received", "connection_made", "connection_lost", "on_message_begin",
            "on_url", "on_header", "on_headers_complete", "on_body", "on_message_complete",
            "on_response_complete", "_start_asgi_task", "_unset_keepalive_if_required",
            "_should_upgrade", "handle_websocket_upgrade", "send_400_response",
            "timeout_keep_alive_handler",
        ),
        (
            "config", "server_state", "flow", "pipeline", "loop", "logger", "cycle",
            "parser", "headers", "transport", "timeout_keep_alive", "timeout_keep_alive_task",
        ),
    ),
    (
        RequestResponseCycle,
        ("run_asgi",),
        (
            "scope", "transport", "flow", "access_log", "default_headers", "message_event",
            "keep_alive", "on_response", "disconnected", "response_started",
            "response_complete", "waiting_for_100_continue", "more_body",
        ),
    ),
    (uvicorn.config.Config, (), ("h11_max_incomplete_event_size",)),
    (uvicorn.server.ServerState, (), ("total_requests", "default_headers")),
    (FlowControl, ("pause_reading", "resume_reading"), ("write_paused",)),
)  # fmt: skip


def missing_uvicorn_internals() -> list[str]:
    """The uvicorn internals this module needs that the installed uvicorn lacks."""
    missing = []
    for owner, names, fields in _INTERNALS:
        used = _names_in_code(owner) if fields else set()
        for name in names:
            if not hasattr(owner, name):
                missing.append(f"{owner.__name__}.{name}")
        for name in fields:
            if name not in used:
                missing.append(f"{owner.__name__}.{name}")
    return missing


def _names_in_code(cls: type) -> set[str]:
    """Every attribute name the functions of `cls` (and its bases) read or set."""
    return {name for code in _codes(cls) for name in code.co_names}


def _codes(cls: type) -> Iterator[Any]:
    for klass in cls.__mro__:
        for member in vars(klass).values():
            code = getattr(member, "__code__", None)
            if code is not None:
                yield code


def protocol_setting(warn: Callable[[str], None]) -> str:
    """What to pass as uvicorn's `http`: the gateway's protocol when the installed uvicorn
    has everything it needs; otherwise uvicorn's stock h11 protocol, with one warning."""
    missing = missing_uvicorn_internals()
    if not missing:
        return GATEWAY_PROTOCOL
    warn(
        f"uvicorn {version('uvicorn')} lacks {', '.join(missing)}, which the gateway's "
        "HTTP protocol uses: serving with uvicorn's stock h11 protocol instead (correct, "
        "slower). Install the locked uvicorn version to get the fast path back."
    )
    return STOCK_PROTOCOL
