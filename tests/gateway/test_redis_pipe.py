"""The pipelined Redis connection against a real redis-server: order, errors, loss."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis.pipe import RedisPipe
from tests.gatewayproc import RedisServer, free_port


def run(scenario: Callable[[RedisPipe], Awaitable[None]], url: str, **kwargs: float) -> None:
    async def main() -> None:
        options = {"connect_timeout_s": 1.0, "reply_deadline_s": 5.0, **kwargs}
        pipe = RedisPipe(url, **options)  # type: ignore[arg-type]
        try:
            await scenario(pipe)
        finally:
            await pipe.aclose()

    asyncio.run(main())


def test_replies_reach_their_own_callers_in_any_concurrency(redis_server: RedisServer) -> None:
    with SyncRedis.from_url(redis_server.url) as direct:
        direct.mset({f"pipe:{i}": f"value-{i}" for i in range(300)})

    async def scenario(pipe: RedisPipe) -> None:
        replies = await asyncio.gather(*(pipe.execute("GET", f"pipe:{i}") for i in range(300)))
        assert replies == [f"value-{i}".encode() for i in range(300)]
        assert await pipe.execute("MGET", "pipe:1", "pipe:none") == [b"value-1", None]

    run(scenario, redis_server.url)


def test_an_error_reply_is_raised_alone_or_returned_in_its_place(
    redis_server: RedisServer,
) -> None:
    with SyncRedis.from_url(redis_server.url) as direct:
        direct.set("pipe:text", "not a number")

    async def scenario(pipe: RedisPipe) -> None:
        with pytest.raises(ResponseError):
            await pipe.execute("INCR", "pipe:text")
        replies = await pipe.execute_many(
            [("SET", "pipe:n", 1, "EX", 60), ("INCR", "pipe:text"), ("INCR", "pipe:n")]
        )
        assert replies[0] == b"OK" and replies[2] == 2
        assert isinstance(replies[1], ResponseError)

    run(scenario, redis_server.url)


def test_a_caller_that_gives_up_leaves_the_order_intact(redis_server: RedisServer) -> None:
    """BLPOP holds the connection's replies back; the callers behind it still get theirs."""
    with SyncRedis.from_url(redis_server.url) as direct:
        direct.set("pipe:after", "after")

    async def scenario(pipe: RedisPipe) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pipe.execute("BLPOP", "pipe:empty-list", "0.3")
        assert await pipe.execute("GET", "pipe:after") == b"after"

    run(scenario, redis_server.url)


def test_batches_get_their_own_replies_in_order_and_one_given_up_keeps_the_order(
    redis_server: RedisServer,
) -> None:
    """execute_many's replies come back as one list per call, whatever is interleaved;
    a batch whose caller gave up still consumes its replies; an empty batch is []."""
    with SyncRedis.from_url(redis_server.url) as direct:
        direct.set("pipe:after", "after")

    async def batch(pipe: RedisPipe, n: int) -> list[Any]:
        return await pipe.execute_many([("ECHO", f"{n}-{i}") for i in range(n % 7 + 2)])

    async def scenario(pipe: RedisPipe) -> None:
        calls = [batch(pipe, n) if n % 3 else pipe.execute("ECHO", f"one-{n}") for n in range(60)]
        replies = await asyncio.gather(*calls)
        for n, reply in enumerate(replies):
            expected = [f"{n}-{i}".encode() for i in range(n % 7 + 2)]
            assert reply == (expected if n % 3 else f"one-{n}".encode())
        assert await pipe.execute_many([]) == []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pipe.execute_many([("BLPOP", "pipe:empty-list", "0.3"), ("PING",)])
        assert await pipe.execute_many([("GET", "pipe:after"), ("PING",)]) == [b"after", b"PONG"]

    run(scenario, redis_server.url)


def test_a_lost_connection_fails_the_waiting_and_the_next_command_reconnects(
    redis_server: RedisServer,
) -> None:
    direct = SyncRedis.from_url(redis_server.url)

    async def scenario(pipe: RedisPipe) -> None:
        await pipe.execute("CLIENT", "SETNAME", "pipe-under-test")
        blocked = asyncio.ensure_future(pipe.execute("BLPOP", "pipe:empty-list", "5"))
        batch = asyncio.ensure_future(pipe.execute_many([("PING",), ("PING",)]))
        await asyncio.sleep(0.1)
        assert direct.client_kill_filter(_type="normal", skipme=True) >= 1
        for waiting in (blocked, batch):
            with pytest.raises(RedisConnectionError):
                await waiting
        assert await pipe.execute("PING") == b"PONG"

    run(scenario, redis_server.url)
    direct.close()


def test_a_late_reply_fails_the_connection_and_the_next_command_reconnects(
    redis_server: RedisServer,
) -> None:
    """BLPOP holds every reply back past the deadline, as a frozen Redis would: the
    commands behind it fail with it, and the next command gets a new connection."""

    async def scenario(pipe: RedisPipe) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        blocked = asyncio.ensure_future(pipe.execute("BLPOP", "pipe:empty-list", "2"))
        await asyncio.sleep(0.1)
        behind = asyncio.ensure_future(pipe.execute("PING"))  # due later, fails earlier
        for waiting in (blocked, behind):
            with pytest.raises(RedisTimeoutError):
                await waiting
        assert 0.25 <= loop.time() - started < 1.0  # the oldest command's deadline
        assert await pipe.execute("PING") == b"PONG"
        assert await pipe.execute("PING") == b"PONG"  # replies in time: nothing fails

    run(scenario, redis_server.url, reply_deadline_s=0.3)


def test_too_many_commands_waiting_drops_the_connection(redis_server: RedisServer) -> None:
    async def scenario(pipe: RedisPipe) -> None:
        blocked = asyncio.ensure_future(pipe.execute("BLPOP", "pipe:empty-list", "5"))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(pipe.execute("PING"))
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError, match="Too many"):
            await pipe.execute("PING")
        for waiting in (blocked, queued):  # failed with the connection, not left hanging
            with pytest.raises(RedisConnectionError):
                await waiting
        assert await pipe.execute("PING") == b"PONG"  # on a new connection

    run(scenario, redis_server.url, max_in_flight=2)


def test_the_url_database_is_selected(redis_server: RedisServer) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/5"

    async def scenario(pipe: RedisPipe) -> None:
        await pipe.execute("SET", "pipe:db", "five")

    run(scenario, url)
    with SyncRedis.from_url(url) as five, SyncRedis.from_url(redis_server.url) as zero:
        assert five.get("pipe:db") == b"five"
        assert zero.get("pipe:db") is None


def test_a_password_in_the_url_authenticates(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret-pw").start()
    try:
        good = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        bad = f"redis://:wrong@127.0.0.1:{server.port}/0"

        async def answers(pipe: RedisPipe) -> None:
            assert await pipe.execute("PING") == b"PONG"

        async def refused(pipe: RedisPipe) -> None:
            with pytest.raises(RedisConnectionError, match="refused the connection setup"):
                await pipe.execute("PING")

        run(answers, good)
        run(refused, bad)
    finally:
        server.stop()


def test_no_server_is_a_connection_error() -> None:
    async def scenario(pipe: RedisPipe) -> None:
        with pytest.raises(RedisConnectionError, match="Could not connect"):
            await pipe.execute("PING")

    run(scenario, f"redis://127.0.0.1:{free_port()}/0")


def test_a_connect_every_caller_gave_up_on_does_not_stick(tmp_path: Path) -> None:
    """A silent peer: the connect fails after its timeout with no one waiting; once a
    real Redis listens there, the next command connects afresh."""
    port = free_port()
    silent = socket.create_server(("127.0.0.1", port))  # accepts, never answers
    url = f"redis://:pw@127.0.0.1:{port}/0"  # a password, so the setup waits for a reply

    async def main() -> None:
        pipe = RedisPipe(url, connect_timeout_s=0.2, reply_deadline_s=5.0)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await pipe.execute("PING")
            await asyncio.sleep(0.4)  # the abandoned connect has failed by now
            silent.close()
            server = RedisServer(tmp_path, password="pw")
            server.port = port
            server.start()
            try:
                assert await pipe.execute("PING") == b"PONG"
            finally:
                server.stop()
        finally:
            await pipe.aclose()

    asyncio.run(main())
