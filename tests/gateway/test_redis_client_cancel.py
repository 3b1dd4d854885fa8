"""A CancelledError that redis-py hands back is not a cancel of the request."""

from __future__ import annotations

import asyncio

import pytest

from gateway.redis.client import absorb_foreign_cancel


async def _cut_short() -> int:
    # What redis-py's pool.disconnect re-raises: a connection's own cancelled connect.
    raise asyncio.CancelledError


async def _slow() -> int:
    await asyncio.sleep(5)
    return 1


def test_a_foreign_cancel_is_absorbed() -> None:
    async def run() -> tuple[int | None, int]:
        result = await absorb_foreign_cancel(_cut_short())
        await asyncio.sleep(0)  # the task goes on: nothing cancels it later
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    assert asyncio.run(run()) == (None, 0)


def test_a_real_cancel_of_the_task_goes_on() -> None:
    async def run() -> None:
        task = asyncio.create_task(absorb_foreign_cancel(_slow()))
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())


def test_results_pass_through() -> None:
    async def ok() -> int:
        return 7

    assert asyncio.run(absorb_foreign_cancel(ok())) == 7
