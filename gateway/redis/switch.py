"""`redis.mode: sentinel`: hear of a failover the moment the sentinels make it.

Without this, a connection to the old master goes on until that master drops it. After
a failover that the sentinels made with the old master still up (`SENTINEL FAILOVER`,
a network split healed), that takes seconds, until they turn it into a replica: writes
made there meanwhile (rate windows, cache entries) are lost with its data. So each
process subscribes to `+switch-master` on every sentinel (any one is enough; the others
are for when it is down); on the message for its master, `on_switch` moves the
connections to the master named (gateway/redis/client.py: `SharedRedis.master_switched`).

A sentinel that cannot be reached is tried again every `RETRY_S`; while none is
reachable, a failover is found as before (a connection the old master drops, or a
READONLY reply).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import RedisConfig

log = logging.getLogger("gateway")

CHANNEL = "+switch-master"
RETRY_S = 1.0
Address = tuple[str, int]


class SwitchWatch:
    """One subscription per sentinel, each in its own task (`start`, `aclose`)."""

    def __init__(
        self, config: RedisConfig, on_switch: Callable[[Address], Awaitable[None]]
    ) -> None:
        self._config = config
        self._master_name = config.master_name or ""
        self._on_switch = on_switch
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for host, port in self._config.sentinel_addresses():
            name = f"sentinel-watch-{host}:{port}"
            self._tasks.append(asyncio.create_task(self._watch(host, port), name=name))

    async def _watch(self, host: str, port: int) -> None:
        config = self._config
        client = Redis(
            host=host,
            port=port,
            username=config.sentinel_username,
            password=config.sentinel_password,
            socket_connect_timeout=config.connect_timeout_s,
            socket_timeout=None,  # a subscription waits for messages as long as it takes
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        try:
            while True:
                try:
                    await self._listen(client)
                except (RedisError, OSError):
                    pass  # this sentinel is down or restarting: the others still tell
                await asyncio.sleep(RETRY_S)
        finally:
            await client.aclose()

    async def _listen(self, client: Redis) -> None:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                address = self._switched_to(message)
                if address is not None:
                    await self._on_switch(address)

    def _switched_to(self, message: Any) -> Address | None:
        """The new master's address in `<name> <old ip> <old port> <new ip> <new port>`,
        if the message is about this gateway's master."""
        if not message or message.get("type") != "message":
            return None
        data = message.get("data")
        fields = (data.decode(errors="replace") if isinstance(data, bytes) else str(data)).split()
        if len(fields) != 5 or fields[0] != self._master_name or not fields[4].isdigit():
            return None
        return fields[3], int(fields[4])

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
