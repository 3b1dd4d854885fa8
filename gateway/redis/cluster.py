"""`redis.mode: cluster`: the pipelined connection, one per master of a Redis Cluster.

`ClusterPipe` has `RedisPipe`'s two calls (`execute`, `execute_many`) and sends each
command to the master that serves its key's slot, over that master's own `RedisPipe`
(one pipelined connection per master, as in standalone mode one in all). A command's key
is its first (a script's first KEYS entry): every script and batch of the gateway keeps
the keys it touches in one slot with a hash tag (gateway/limits/scripts.py), so the
cluster never answers CROSSSLOT. `SCRIPT LOAD` goes to each master the same batch sends
commands to (before them), or to every master in a batch of loads alone.

The slot map comes from `CLUSTER SLOTS`, asked of the known masters, then of the seeds
(`redis.url` and `redis.nodes`), each within the connect timeout. It is asked again
when a master cannot be reached (its replica may have been promoted: the call fails
as in standalone mode, and the next call finds the new master) and when a reply says
`MOVED` (the slot moved: the command is sent again where it now lives, once the map
was asked again). `ASK` (a slot being migrated) sends the command once to the node
named, after `ASKING`. `CLUSTERDOWN` and `TRYAGAIN` count as Redis being unavailable,
as a lost connection does: the cache fails open, limits and budgets per
`limits.on_redis_error` (rule 7).

A batch whose commands live on several masters goes out to each at once; a master
that fails fails the whole call, as a lost connection does in standalone mode
(a limit write batch is then retried whole: each write is idempotent per request id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis.pipe import Command, RedisPipe

SLOTS = 16384
Address = tuple[str, int]
_MAX_REDIRECTS = 3
# Asking the cluster for its layout again at most this often: while a master is down,
# every call would ask otherwise (before its replica is promoted the answer is the same).
_REFRESH_EVERY_S = 0.2
_UNAVAILABLE = ("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")


class ClusterPipe:
    """Lazily connected to each master; `execute_many` splits a batch by master."""

    def __init__(
        self,
        url: str,
        seeds: Sequence[Address],
        *,
        connect_timeout_s: float,
        reply_deadline_s: float,
    ) -> None:
        """`url`: how to connect to every node (credentials, TLS); `seeds`: where to
        learn the layout when no master known answers."""
        self._url = url
        self._seeds = list(seeds)
        self._connect_timeout_s = connect_timeout_s
        self._reply_deadline_s = reply_deadline_s
        self._slots: list[Address | None] = [None] * SLOTS
        self._masters: list[Address] = []
        self._pipes: dict[Address, RedisPipe] = {}
        self._stale = True
        self._refreshed_at = -_REFRESH_EVERY_S
        self._refreshing: asyncio.Task[None] | None = None
        self._failed_at: dict[Address, float] = {}  # when a node last failed a call

    async def execute(self, *command: str | bytes | int | float) -> Any:
        reply = (await self.execute_many([command]))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Every reply in order; an error reply (`ResponseError`) in its place, a master
        lost (or the cluster down) raised as a ConnectionError."""
        if not commands:
            return []
        if self._stale:
            await self._refresh()
        groups: dict[Address, list[int]] = {}
        loads = []
        for i, command in enumerate(commands):
            if _text(command[0]).upper() == "SCRIPT":
                loads.append(i)
            else:
                groups.setdefault(self._target(command), []).append(i)
        # A script is loaded where the batch runs it (every master when it runs none): a
        # master down elsewhere does not fail the batch.
        if loads:
            for address in list(groups) or self._masters or self._unavailable():
                groups[address] = sorted([*groups.get(address, ()), *loads])
        replies: list[Any] = [None] * len(commands)
        sends = [self._send(address, i, commands, replies) for address, i in groups.items()]
        await asyncio.gather(*sends)
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                replies[i] = await self._redirected(commands[i], reply)
        return replies

    def _target(self, command: Command) -> Address:
        """The master of the command's slot (any master for a command without a key)."""
        key = _key_of(_text(command[0]).upper(), command)
        if key is None:
            return self._masters[0] if self._masters else self._unavailable()
        address = self._slots[key_slot(key)]
        return address if address is not None else self._unavailable()

    def _unavailable(self) -> NoReturn:
        self._stale = True
        raise RedisConnectionError("Redis Cluster: no master serves the slot.")

    async def _send(
        self, address: Address, indexes: list[int], commands: Sequence[Command], replies: list[Any]
    ) -> None:
        try:
            answers = await self._pipe(address).execute_many([commands[i] for i in indexes])
        except (RedisConnectionError, RedisTimeoutError):
            self._stale = True  # the master may be gone (or cut off): its replica promoted
            self._failed_at[address] = time.monotonic()
            raise
        for i, answer in zip(indexes, answers, strict=True):
            if replies[i] is None or isinstance(replies[i], ResponseError):
                replies[i] = answer  # a broadcast keeps one good reply

    async def _redirected(self, command: Command, reply: ResponseError) -> Any:
        """The reply once MOVED and ASK were followed; CLUSTERDOWN and the like raised."""
        for _ in range(_MAX_REDIRECTS):
            kind, _, rest = str(reply).partition(" ")
            if kind in _UNAVAILABLE:
                self._stale = True
                raise RedisConnectionError(f"Redis Cluster unavailable ({kind}).")
            if kind not in ("MOVED", "ASK"):
                return reply  # the command's own error: the caller's to handle
            slot, _, where = rest.partition(" ")
            host, _, port = where.rpartition(":")
            address = (host, int(port))
            if kind == "MOVED":
                self._slots[int(slot)] = address  # until the whole map is asked again
                self._stale = True
                reply = (await self._pipe(address).execute_many([command]))[0]
            else:
                reply = (await self._pipe(address).execute_many([("ASKING",), command]))[1]
            if not isinstance(reply, ResponseError):
                return reply
        self._stale = True
        raise RedisConnectionError("Redis Cluster: too many redirections.")

    def _pipe(self, address: Address) -> RedisPipe:
        pipe = self._pipes.get(address)
        if pipe is None:
            pipe = self._pipes[address] = RedisPipe(
                self._url,
                connect_timeout_s=self._connect_timeout_s,
                reply_deadline_s=self._reply_deadline_s,
                address=address,
            )
        return pipe

    async def _refresh(self) -> None:
        """Asks for the layout (one request at a time for every caller), at most every
        `_REFRESH_EVERY_S`; until then, and when no node answers, the map known."""
        if time.monotonic() - self._refreshed_at < _REFRESH_EVERY_S and self._masters:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._ask_layout())
            self._refreshing.add_done_callback(self._refreshed)
        await asyncio.shield(self._refreshing)

    def _refreshed(self, refreshing: asyncio.Task[None]) -> None:
        if self._refreshing is refreshing:
            self._refreshing = None
        if not refreshing.cancelled():
            refreshing.exception()  # retrieved, even when every waiter gave up

    async def _ask_layout(self) -> None:
        self._refreshed_at = time.monotonic()
        error: Exception = RedisConnectionError("Redis Cluster: no node to ask.")
        # The nodes that failed last are asked last: a dead master (its connect may take
        # the whole connect timeout) does not hold up every refresh until it is replaced.
        known = list(dict.fromkeys([*self._masters, *self._seeds]))
        for address in sorted(known, key=lambda a: self._failed_at.get(a, 0.0)):
            try:
                async with asyncio.timeout(self._connect_timeout_s + self._reply_deadline_s):
                    layout = await self._pipe(address).execute("CLUSTER", "SLOTS")
            except (RedisConnectionError, RedisTimeoutError, ResponseError, TimeoutError) as exc:
                self._failed_at[address] = time.monotonic()
                error = exc
                continue
            self._apply(layout, address)
            return
        if not self._masters:
            raise RedisConnectionError(f"Redis Cluster: no node answered ({error}).")

    def _apply(self, layout: Any, asked: Address) -> None:
        slots: list[Address | None] = [None] * SLOTS
        masters: dict[Address, None] = {}
        for entry in layout:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = _text(master[0]) or asked[0]  # a node may not know its own address
            address = (host, int(master[1]))
            slots[start : end + 1] = [address] * (end - start + 1)
            masters[address] = None
        self._slots, self._masters, self._stale = slots, list(masters), False
        for address in [a for a in self._pipes if a not in masters and a not in self._seeds]:
            self._pipes.pop(address).close()  # a master no more (or not yet)

    async def aclose(self) -> None:
        pipes, self._pipes = list(self._pipes.values()), {}
        await asyncio.gather(*(pipe.aclose() for pipe in pipes), return_exceptions=True)


def _key_of(name: str, command: Command) -> bytes | None:
    """The key that places a command: a script's first of KEYS, else its first argument."""
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"):
        return _bytes(command[3]) if len(command) > 3 and int(command[2]) > 0 else None
    if name in ("PING", "ASKING", "CLUSTER", "INFO", "ROLE") or len(command) < 2:
        return None
    return _bytes(command[1])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: str | bytes | int | float) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
