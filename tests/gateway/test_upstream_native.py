"""The native HTTP/1.1 client (`server.upstream_transport: native`) against raw servers on
127.0.0.1 that answer with exact bytes: framing, reuse, encodings, timeouts, failures."""

from __future__ import annotations

import asyncio
import gc
import gzip
import shutil
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.errors import UpstreamTimeoutError, UpstreamUnavailableError
from gateway.transport import native
from gateway.transport.base import Timeouts, UpstreamRequest
from gateway.transport.native import NativeUpstream
from tests.fakes.server import free_port

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # False: close after
BODY = b'{"model":"m"}'


class RawServer:
    """Reads one request at a time (head, then content-length bytes) and hands it over."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.ended = 0  # connections over (the client closed them, or we did)
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.answer(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended += 1
            writer.close()


@asynccontextmanager
async def raw_server(
    answer: Answer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    origin = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
    try:
        yield raw, f"{origin}/v1/chat/completions?x=1"
    finally:
        server.close()


def reply(status: int, body: bytes, *headers: str, close: bool = False) -> Answer:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *headers]
        if close:
            head.append("connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return not close

    return answer


def pieces(*parts: bytes, keep_alive: bool = False, pause_s: float = 0.01) -> Answer:
    """Sends the answer in `parts`, `pause_s` apart; then closes, unless `keep_alive`."""

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        return keep_alive

    return answer


def request(
    url: str, read_s: float = 5.0, total_s: float = 10.0, **headers: str
) -> UpstreamRequest:
    timeouts = Timeouts(connect_s=2.0, read_s=read_s, total_s=total_s)
    return UpstreamRequest(url, {"authorization": "Bearer k", **headers}, BODY, timeouts=timeouts)


def run(scenario: Callable[[NativeUpstream], Awaitable[None]]) -> None:
    async def main() -> None:
        upstream = NativeUpstream()
        try:
            await scenario(upstream)
        finally:
            await upstream.aclose()

    asyncio.run(main())


def test_a_call_is_one_well_formed_request_and_connections_are_reused() -> None:
    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(reply(200, b'{"ok":1}', "content-type: application/json")) as (
            raw,
            url,
        ):
            for n in range(3):
                response = await upstream.send(request(url, **{"x-call": str(n)}))
                assert (response.status, response.body) == (200, b'{"ok":1}')
                assert response.headers["Content-Type"] == "application/json"  # any case
            assert raw.connections == 1
            for n, sent in enumerate(raw.requests):  # heads are reused, never stale
                assert f"\r\nx-call: {n}\r\n".encode() in sent
            head, _, body = raw.requests[0].partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /v1/chat/completions?x=1 HTTP/1.1"
            assert f"host: 127.0.0.1:{url.split(':')[2].split('/')[0]}".encode() in lines
            assert b"authorization: Bearer k" in lines
            assert f"content-length: {len(BODY)}".encode() in lines
            assert body == BODY

    run(scenario)


def test_connection_close_and_a_body_that_ends_with_the_connection() -> None:
    until_close = pieces(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ", b"part two")

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(until_close) as (raw, url):
            assert (await upstream.send(request(url))).body == b"part one, part two"
            assert (await upstream.send(request(url))).body == b"part one, part two"
            assert raw.connections == 2  # not pooled after `connection: close`

    run(scenario)


def test_chunked_gzip_and_deflate_bodies_are_decoded() -> None:
    text = b'{"choices":[]}' * 50

    async def encoded(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"x-want: gzip" in request:
            body, encoding = gzip.compress(text), "gzip"
        else:
            body, encoding = zlib.compress(text), "deflate"
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:10], body[10:]))
        head = f"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: {encoding}"
        writer.write(head.encode() + b"\r\n\r\n" + chunks + b"0\r\n\r\n")
        await writer.drain()
        return True

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(encoded) as (raw, url):
            assert (await upstream.send(request(url, **{"x-want": "gzip"}))).body == text
            assert (await upstream.send(request(url, **{"x-want": "deflate"}))).body == text
            assert raw.connections == 1

    run(scenario)


def test_an_idle_connection_the_upstream_closed_is_not_used_again() -> None:
    async def answer_then_hang_up(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await reply(200, b"{}")(request, writer)
        return False  # closes without a `connection: close` header

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(answer_then_hang_up) as (raw, url):
            assert (await upstream.send(request(url))).status == 200
            await asyncio.sleep(0.05)  # the close reaches the pooled connection
            assert (await upstream.send(request(url))).status == 200
            assert raw.connections == 2

    run(scenario)


def test_idle_connections_close_after_keepalive_s_counted_from_their_last_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native, "KEEPALIVE_S", 0.5)

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(reply(200, b"{}")) as (raw, url):
            assert (await upstream.send(request(url))).status == 200  # idle from t=0
            await asyncio.sleep(0.3)
            assert (await upstream.send(request(url))).status == 200  # reused; idle from 0.3
            await asyncio.sleep(0.3)
            assert (raw.connections, raw.ended) == (1, 0)  # t=0.6: its use at 0.3 counts
            await asyncio.sleep(0.5)
            assert (raw.connections, raw.ended) == (1, 1)  # t=1.1: closed at 0.8
            assert (await upstream.send(request(url))).status == 200
            assert raw.connections == 2

    run(scenario)


def test_closed_connections_are_freed_without_the_cycle_collector() -> None:
    """Reference counting alone frees a closed connection (the collector runs rarely
    under load: whatever waits for it piles up)."""

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(reply(200, b"{}", close=True)) as (raw, url):
            for _ in range(3):
                assert (await upstream.send(request(url))).status == 200
            await asyncio.sleep(0.05)  # the last close reaches its connection
            assert raw.connections == 3
            assert [o for o in gc.get_objects() if isinstance(o, native._Exchange)] == []

    gc.collect()
    gc.disable()
    try:
        run(scenario)
    finally:
        gc.enable()


def test_no_answer_within_read_s_is_a_timeout_and_the_connection_is_dropped() -> None:
    async def stall(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"x-stall: 1" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")  # then silence
            await writer.drain()
            await asyncio.sleep(2)
            return False
        return await reply(200, b"{}")(request, writer)

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(stall) as (raw, url):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeoutError):
                await upstream.send(request(url, read_s=0.3, **{"x-stall": "1"}))
            assert 0.25 < loop.time() - started < 1.5
            assert (await upstream.send(request(url))).status == 200
            assert raw.connections == 2  # the stalled one was not pooled

    run(scenario)


def test_each_call_on_a_pooled_connection_keeps_its_own_read_s() -> None:
    """A connection's timer outlives a call: a later call with a shorter read_s still
    times out on time, and a timer that comes due while the connection is idle in the
    pool leaves it usable."""

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"x-stall: 1" in request:
            await asyncio.sleep(1.5)  # silence past the short read_s
            return False
        return await reply(200, b"{}")(request, writer)

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(answer) as (raw, url):
            loop = asyncio.get_running_loop()
            assert (await upstream.send(request(url, read_s=0.2))).status == 200
            await asyncio.sleep(0.4)  # its timer comes due with the connection idle
            assert (await upstream.send(request(url, read_s=5.0))).status == 200
            assert raw.connections == 1
            started = loop.time()
            with pytest.raises(UpstreamTimeoutError):  # not 5 s: the last call's timer
                await upstream.send(request(url, read_s=0.3, **{"x-stall": "1"}))
            assert 0.25 < loop.time() - started < 1.0

    run(scenario)


def test_an_answer_that_trickles_past_total_s_times_out() -> None:
    trickle = pieces(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", *[b"x"] * 40, pause_s=0.05)

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(trickle) as (_, url):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeoutError):  # no gap reaches read_s
                await upstream.send(request(url, read_s=0.3, total_s=0.6))
            assert 0.55 < loop.time() - started < 1.5

    run(scenario)


def test_the_callers_deadline_cuts_a_call_before_its_own_timeouts() -> None:
    """`within_s` (the request's deadline) ends a call that read_s and total_s allow."""
    trickle = pieces(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", *[b"x"] * 40, pause_s=0.05)

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(trickle) as (raw, url):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeoutError):
                await upstream.send(request(url, read_s=5.0, total_s=10.0), within_s=0.4)
            assert 0.35 < loop.time() - started < 1.2
            await asyncio.sleep(0.1)
            assert raw.ended == 1  # cut: the connection was not pooled

    run(scenario)


def test_refused_connect_is_unavailable_during_connect() -> None:
    async def scenario(upstream: NativeUpstream) -> None:
        url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"
        with pytest.raises(UpstreamUnavailableError) as caught:
            await upstream.send(request(url))
        assert caught.value.during_connect

    run(scenario)


def test_a_hang_up_mid_answer_is_unavailable_and_not_retryable() -> None:
    half = pieces(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(half) as (_, url):
            with pytest.raises(UpstreamUnavailableError) as caught:
                await upstream.send(request(url))
            assert not caught.value.during_connect

    run(scenario)


def test_malformed_answers_and_line_breaks_in_headers_are_refused() -> None:
    garbage = pieces(b"NOT HTTP AT ALL\r\n\r\n")

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(garbage) as (raw, url):
            with pytest.raises(UpstreamUnavailableError, match="malformed"):
                await upstream.send(request(url))
            with pytest.raises(UpstreamUnavailableError, match="line break"):
                await upstream.send(request(url, **{"x-injected": "a\r\nx-evil: 1"}))
            assert len(raw.requests) == 1  # the second never left

    run(scenario)


def test_a_redirect_is_returned_not_followed() -> None:
    async def scenario(upstream: NativeUpstream) -> None:
        answer = reply(307, b"", "location: http://127.0.0.1:1/elsewhere")
        async with raw_server(answer) as (raw, url):
            response = await upstream.send(request(url))
            assert response.status == 307 and len(raw.requests) == 1

    run(scenario)


def sse_chunks(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)


def test_a_stream_read_to_its_end_leaves_its_connection_for_the_next_call() -> None:
    stream = pieces(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        sse_chunks(b"data: 1\n\n"),
        sse_chunks(b"data: [DONE]\n\n"),
        b"0\r\n\r\n",
        keep_alive=True,
    )

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(stream) as (raw, url):
            for _ in range(2):
                async with upstream.stream(request(url)) as opened:
                    lines = [line async for batch in opened.line_batches() for line in batch]
                assert lines == [b"data: 1\n", b"\n", b"data: [DONE]\n", b"\n"]
            assert raw.connections == 1

    run(scenario)


def test_a_stream_left_early_closes_its_connection() -> None:
    hung_up = asyncio.Event()

    async def endless(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            for _ in range(200):
                writer.write(sse_chunks(b"data: more\n\n"))
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            hung_up.set()
        return False

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(endless) as (_, url):
            async with upstream.stream(request(url)) as opened:
                async for _ in opened.line_batches():
                    break
            await asyncio.wait_for(hung_up.wait(), 2)  # the upstream saw the hang-up

    run(scenario)


def test_a_stream_silent_past_read_s_times_out() -> None:
    async def stalls(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(sse_chunks(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(2)
        return False

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(stalls) as (_, url):
            async with upstream.stream(request(url, read_s=0.3)) as opened:
                batches = opened.line_batches()
                assert await anext(batches) == [b"data: 1\n", b"\n"]
                with pytest.raises(UpstreamTimeoutError):
                    await anext(batches)

    run(scenario)


def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte() -> None:
    line = b"data: " + b"x" * 1000 + b"\n\n"

    async def flood(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(sse_chunks(*[line] * 2000))  # 2 MB at once, past the pause mark
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def scenario(upstream: NativeUpstream) -> None:
        async with raw_server(flood) as (_, url):
            async with upstream.stream(request(url, read_s=1.0)) as opened:
                count = 0
                async for batch in opened.line_batches():
                    count += len(batch)
                    await asyncio.sleep(0.005)  # slower than the socket
                assert count == 2 * 2000

    run(scenario)


@pytest.fixture
def localhost_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` (cert, key), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_verifies_the_certificate_and_its_host_name(
    localhost_cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = localhost_cert
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def untrusted(upstream: NativeUpstream) -> None:
        async with raw_server(reply(200, b"{}"), tls) as (raw, url):
            with pytest.raises(UpstreamUnavailableError) as caught:
                await upstream.send(request(url))
            assert caught.value.during_connect and not raw.requests

    async def trusted(upstream: NativeUpstream) -> None:
        async with raw_server(reply(200, b'{"ok":1}'), tls) as (raw, url):
            for _ in range(2):
                assert (await upstream.send(request(url))).body == b'{"ok":1}'
            assert raw.connections == 1
            assert b"host: localhost:" in raw.requests[0]

    run(untrusted)  # the system's CAs do not know it
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read by ssl.create_default_context
    run(trusted)
