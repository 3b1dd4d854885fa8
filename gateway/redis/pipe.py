"""One pipelined Redis connection for the commands on every request's path.

redis-py checks a connection out of its pool (behind a lock), packs, sends, parses and
checks it back in for every command: about a quarter of the gateway's CPU for a
request that misses the cache. Here commands from every request share one socket:
each is written at once, and replies (parsed by hiredis) resolve the callers' futures
in the order the commands went out, as Redis guarantees. No pool, no lock, no task.

It raises redis-py's own exceptions (`ConnectionError` for the connection,
`TimeoutError` for a late reply, `ResponseError` for an error reply), so `SharedRedis`
treats both clients alike. A caller that gives up leaves its slot in the queue: a late
reply is dropped when it comes and the order holds. A reply not in within
`reply_deadline_s` of its command fails the whole connection (a frozen Redis, or a
link that lost its replies: every command behind it would wait as long), as redis-py
drops a connection whose call timed out; one timer per connection watches the oldest
command, instead of a timeout per call (a few microseconds each, on every request). A
lost connection fails every waiting command and the next command connects again; past
`max_in_flight` waiting commands the connection is dropped rather than queued on.

With a `sentinel` (redis.mode: sentinel) each connect first asks the sentinels where the
master is (redis-py's `Sentinel.discover_master`: each sentinel in turn, each within
the connect timeout), then checks with ROLE that what it reached is a master. After a
failover the old connection is closed by Redis (Sentinel kills the clients of the
master it demotes) or answers READONLY: either drops it, and the next command connects
to the new master. Sooner, when the sentinels announce the switch (gateway/redis/
switch.py): `master_switched` retires the connection (it closes once its replies are
in) and the next command connects to the master named. All of it at connect time:
sending and reading commands cost the same in both modes, but for one call per reply
in sentinel mode (the READONLY check).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[str | bytes | int | float]


class _ReplyProtocol(asyncio.Protocol):
    """Feeds hiredis and hands each reply to the oldest waiting command."""

    def __init__(self, reply_deadline_s: float) -> None:
        self.transport: asyncio.Transport | None = None
        # Made in the loop's connect; kept: get_running_loop() is a getpid() system call
        # per call on Python 3.11 (its fork check).
        self.loop = asyncio.get_running_loop()
        self.waiting: deque[tuple[_Sink, float]] = deque()  # (where the reply goes, due)
        self._reader: hiredis.Reader | _DemotionWatch = hiredis.Reader(replyError=ResponseError)
        self._deadline_s = reply_deadline_s
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # commands of this event-loop turn, not yet written

    def send(self, data: bytes) -> None:
        """Writes `data` at the end of this event-loop turn, with every other command of
        the turn: one system call for all the admissions, cache reads and writes that
        concurrent requests send together."""
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is None or self.transport.is_closing():
            return  # connection_lost has failed (or will fail) their waiting replies
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self.waiting
        while (reply := self._reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(RedisConnectionError("Redis sent an unexpected reply."))
                return
            sink = waiting.popleft()[0]
            if sink.done():
                continue  # its caller gave up; the reply still keeps the order
            if isinstance(sink, _Replies):
                sink.add(reply)
            elif isinstance(reply, ResponseError):
                sink.set_exception(reply)
            else:
                sink.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._drain(RedisConnectionError("Connection to Redis lost."))

    def expect(self, sinks: list[_Sink]) -> None:
        """Queue replies to wait for, each due `reply_deadline_s` from now."""
        due = self.loop.time() + self._deadline_s
        self.waiting.extend([(sink, due) for sink in sinks])
        if self._timer is None:
            self._timer = self.loop.call_at(due, self._check_overdue)

    def _check_overdue(self) -> None:
        self._timer = None
        loop = self.loop
        if not self.waiting:
            return
        due = self.waiting[0][1]  # the oldest command: replies come in order
        if loop.time() >= due:
            self.fail(RedisTimeoutError("Redis did not answer in time."))
        else:
            self._timer = loop.call_at(due, self._check_overdue)

    def fail(self, error: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails what still waits
        self._drain(error)

    def _drain(self, error: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            sink = self.waiting.popleft()[0]
            if not sink.done():
                sink.set_exception(error)
                sink.exception()  # a caller that gave up will not retrieve it


class _MasterProtocol(_ReplyProtocol):
    """A connection to the master that the sentinels named: a READONLY reply (it has
    been demoted to a replica since) drops the connection (`_DemotionWatch`). Retired
    (the sentinels switched to another master), it takes no new command and closes once
    the replies it waits for are in."""

    def __init__(self, reply_deadline_s: float) -> None:
        super().__init__(reply_deadline_s)
        self._reader = _DemotionWatch(hiredis.Reader(replyError=ResponseError), self)
        self.retired = False

    def retire(self) -> None:
        self.retired = True
        self._close_if_done()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.retired:
            self._close_if_done()

    def _close_if_done(self) -> None:
        if not self.waiting and self.transport is not None:
            self.transport.close()


class _DemotionWatch:
    """hiredis' reader, with a READONLY error reply turned into the connection's loss:
    every command waiting on it fails with a ConnectionError (what the callers get when
    the master goes away), and the next command connects again, asking the sentinels."""

    __slots__ = ("_reader", "_protocol")

    def __init__(self, reader: hiredis.Reader, protocol: _ReplyProtocol) -> None:
        self._reader = reader
        self._protocol = protocol

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def gets(self) -> Any:
        reply = self._reader.gets()
        if isinstance(reply, ResponseError) and str(reply).startswith("READONLY"):
            demoted = "Redis master demoted to a replica (READONLY): connecting again."
            self._protocol.fail(RedisConnectionError(demoted))
            return False  # the connection is gone: no more replies from it
        return reply


class RedisPipe:
    """Lazily connected; `execute` sends one command, `execute_many` several in one write."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        reply_deadline_s: float,
        max_in_flight: int = 10_000,
        sentinel: Sentinel | None = None,
        master_name: str = "",
        address: tuple[str, int] | None = None,
    ) -> None:
        """`url`: where to connect; with a `sentinel`, only how (credentials, database,
        TLS): the master the sentinels name `master_name` is where. The pipe owns the
        sentinel (`aclose` closes its connections). `address`: (host, port) instead of
        the URL's (a cluster node, see gateway/redis/cluster.py)."""
        self._options: dict[str, Any] = dict(parse_url(url))
        if address is not None:
            self._options["host"], self._options["port"] = address
        self._sentinel = sentinel
        self._master_name = master_name
        self._protocol_class = _ReplyProtocol if sentinel is None else _MasterProtocol
        self._connect_timeout_s = connect_timeout_s
        self._reply_deadline_s = reply_deadline_s
        self._max_in_flight = max_in_flight
        self._protocol: _ReplyProtocol | None = None
        self._switched_to: tuple[str, int] | None = None  # `master_switched`'s address
        self._connecting: asyncio.Task[_ReplyProtocol] | None = None

    async def execute(self, *command: str | bytes | int | float) -> Any:
        protocol = self._open_protocol() or await self._connect()
        future: asyncio.Future[Any] = protocol.loop.create_future()
        self._send(protocol, [command], [future])
        return await future

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Every reply in order, sent in one write; an error reply (`ResponseError`) is
        returned in its place, a lost connection raised."""
        if not commands:
            return []
        protocol = self._open_protocol() or await self._connect()
        return await self._send_many(protocol, commands)

    def _send_many(
        self, protocol: _ReplyProtocol, commands: Sequence[Command]
    ) -> asyncio.Future[list[Any]]:
        # One future for all the replies: no gather, no callback per reply.
        future: asyncio.Future[list[Any]] = protocol.loop.create_future()
        replies = _Replies(future, len(commands))
        self._send(protocol, commands, [replies] * len(commands))
        return future

    def _send(
        self, protocol: _ReplyProtocol, commands: Sequence[Command], sinks: list[_Sink]
    ) -> None:
        if not protocol.open:  # lost while its connect was being awaited
            raise RedisConnectionError("Connection to Redis lost.")
        if len(protocol.waiting) + len(commands) > self._max_in_flight:
            # Redis stopped answering (frozen, or a peer gone without a word): start over
            # on a new connection rather than wait behind replies that may never come.
            protocol.fail(RedisConnectionError("Redis stopped answering."))
            raise RedisConnectionError("Too many Redis commands waiting for replies.")
        protocol.expect(sinks)
        protocol.send(b"".join([_pack(c) for c in commands]))

    def master_switched(self, address: tuple[str, int]) -> bool:
        """The sentinels made `address` the master: a connection to another one is
        retired (its waiting commands still get their replies) and the next command
        connects anew, asking the sentinels. True if it was retired."""
        protocol = self._protocol
        connected_to = (self._options.get("host"), int(self._options.get("port") or 0))
        if not isinstance(protocol, _MasterProtocol) or connected_to == address:
            return False
        self._protocol = None
        self._switched_to = address  # not every sentinel may name it yet: connect there
        protocol.retire()
        return True

    def _open_protocol(self) -> _ReplyProtocol | None:
        """The open connection; None once the last was lost or dropped (connect again)."""
        protocol = self._protocol
        return protocol if protocol is not None and protocol.open else None

    async def _connect(self) -> _ReplyProtocol:
        # Every command that finds no connection waits for the same connect.
        # The connect goes on if they give up (shielded); once done, the next one is new.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, connecting: asyncio.Task[_ReplyProtocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved, even when every waiter gave up

    async def _open(self) -> _ReplyProtocol:
        try:
            if self._sentinel is not None:
                # A master not found raises MasterNotFoundError, a ConnectionError.
                address = self._switched_to or await self._sentinel.discover_master(
                    self._master_name
                )
                self._switched_to = None  # once: if it is no master, the sentinels tell
                self._options["host"], self._options["port"] = address
            async with asyncio.timeout(self._connect_timeout_s):
                protocol = await self._create_connection(self._new_protocol)
                await self._handshake(protocol)
        except (OSError, TimeoutError) as exc:
            error = f"Could not connect to Redis ({type(exc).__name__})."
            raise RedisConnectionError(error) from None
        self._protocol = protocol
        return protocol

    def _new_protocol(self) -> _ReplyProtocol:
        return self._protocol_class(self._reply_deadline_s)

    async def _create_connection(self, factory: Any) -> _ReplyProtocol:
        loop, options = asyncio.get_running_loop(), self._options
        if options.get("connection_class") is UnixDomainSocketConnection:
            _, protocol = await loop.create_unix_connection(factory, options["path"])
        else:
            secure = options.get("connection_class") is SSLConnection
            tls = _tls_context(options) if secure else None
            host, port = options.get("host", "localhost"), int(options.get("port", 6379))
            _, protocol = await loop.create_connection(factory, host, port, ssl=tls)
        return protocol  # type: ignore[no-any-return]

    async def _handshake(self, protocol: _ReplyProtocol) -> None:
        options, commands = self._options, list[Command]()
        if options.get("password") is not None:
            user, password = options.get("username"), options["password"]
            commands.append(("AUTH", user, password) if user else ("AUTH", password))
        if int(options.get("db") or 0):
            commands.append(("SELECT", int(options["db"])))
        if self._sentinel is not None:
            # The sentinels may name a master that has just been demoted (their view lags
            # a failover by up to a second or two): connect only to a master.
            commands.append(("ROLE",))
        if not commands:
            return
        try:
            replies = await self._send_many(protocol, commands)
        except RedisConnectionError as error:
            replies = [error]
        refused: object = next((r for r in replies if isinstance(r, BaseException)), None)
        if refused is None and self._sentinel is not None and _role(replies[-1]) != "master":
            where, role = f"{options['host']}:{options['port']}", _role(replies[-1])
            refused = f"{where}, named master of {self._master_name!r}, is a {role}"
        if refused is not None:
            if protocol.transport is not None:
                protocol.transport.close()
            raise RedisConnectionError(f"Redis refused the connection setup: {refused}")

    def close(self) -> None:
        """Closes the connection (commands waiting on it fail); the next one connects."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    async def aclose(self) -> None:
        self.close()
        if self._sentinel is not None:
            await close_sentinels(self._sentinel)


def _role(reply: Any) -> str:
    """The role in a ROLE reply: master, slave or sentinel."""
    role = reply[0] if isinstance(reply, list) and reply else reply
    return role.decode(errors="replace") if isinstance(role, bytes) else str(role)


async def close_sentinels(sentinel: Sentinel) -> None:
    """Close the connections of redis-py's clients of each sentinel (`Sentinel.aclose`
    is not in every redis-py version the project allows)."""
    clients = sentinel.sentinels
    await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)


class _Replies:
    """The replies of one `execute_many` call, in order, into one future once all came.
    Quacks like the future for `_ReplyProtocol` (done, set_exception, exception)."""

    __slots__ = ("_future", "_replies", "_left")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self._future = future
        self._replies: list[Any] = []
        self._left = count

    def add(self, reply: Any) -> None:
        self._replies.append(reply)  # an error reply too: it stands in its command's place
        self._left -= 1
        if not self._left:
            self._future.set_result(self._replies)

    def done(self) -> bool:
        return self._future.done()

    def set_exception(self, error: BaseException) -> None:
        self._future.set_exception(error)

    def exception(self) -> BaseException | None:
        return self._future.exception()


_Sink = asyncio.Future[Any] | _Replies  # where a reply goes


def _pack(command: Command) -> bytes:
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # stub: 1-tuples
    return packed


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """`rediss://` as redis-py reads its query: `ssl_ca_certs`, `ssl_cert_reqs=none`,
    `ssl_check_hostname`; verified, host name included, by default."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    return context
