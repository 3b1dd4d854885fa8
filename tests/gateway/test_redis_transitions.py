"""`SharedRedis` logs an outage once, and its end only when Redis answers: a call that
succeeds without a round trip (an empty pipeline or batch) says nothing about Redis."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import RedisConfig
from gateway.redis import SharedRedis, shared_redis
from gateway.telemetry import Metrics
from tests.gatewayproc import RedisServer

UNAVAILABLE, RECOVERED = "redis unavailable", "redis available again"


async def empty_pipeline(client: Any) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        result: list[Any] = await pipe.execute()  # nothing queued: no connection used
        return result


async def no_op_successes(shared: SharedRedis) -> None:
    assert await shared.run("stats", empty_pipeline) == []
    assert await shared.run_piped("cache", lambda pipe: pipe.execute_many([])) == []
    await asyncio.sleep(0.3)  # what a success set off (a PING) has answered or failed


def test_no_op_successes_do_not_end_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisServer(tmp_path)  # a port with nothing listening, until started
    config = RedisConfig(url=redis.url, connect_timeout_s=0.2, operation_deadline_s=0.25)

    async def run() -> list[str]:
        shared = shared_redis(config, Metrics(CollectorRegistry()))
        try:
            assert not await shared.ping()
            for _ in range(3):
                await no_op_successes(shared)
            assert not shared.healthy
            redis.start()
            await no_op_successes(shared)  # now the PING they set off is answered
            assert shared.healthy
            await no_op_successes(shared)
            assert await shared.ping()
        finally:
            await shared.aclose()
            redis.stop()
        return [r.getMessage() for r in caplog.records if "redis" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="gateway"):
        lines = asyncio.run(run())
    assert [line.split(" (")[0] for line in lines] == [UNAVAILABLE, RECOVERED]
