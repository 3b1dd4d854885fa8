"""Stored Responses (`gateway.records.ResponseStore`) against real databases (an SQLite
file and a real PostgreSQL): tenant scoping, conversations read in one recursive query,
delete, retention, the 0004 migration, and an outage that answers anyway and writes
what it held once SQL is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from gateway.config import DatabaseConfig
from gateway.records import (
    SQL_ERRORS,
    ResponseStore,
    StoredResponse,
    create_engine,
    migrate,
)
from tests.pgserver import PostgresServer

T = TypeVar("T")
TENANT, OTHER = "team:blue", "key:abc123"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def stored(
    response_id: str,
    previous: str | None = None,
    tenant: str = TENANT,
    created_at: float | None = None,
) -> StoredResponse:
    item = {"id": f"msg_in_{response_id}", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": f"input of {response_id}"}],
            "status": "completed"}  # fmt: skip
    output = {"id": f"msg_out_{response_id}", "type": "message", "role": "assistant",
              "status": "completed", "content": [{"type": "output_text",
              "text": f"output of {response_id}", "annotations": [], "logprobs": []}]}  # fmt: skip
    response = {"id": response_id, "object": "response", "output": [output]}
    return StoredResponse(
        response_id, tenant, created_at or time.time(), previous, [item], response
    )


async def in_store(
    config: DatabaseConfig, work: Callable[[ResponseStore], Awaitable[None]]
) -> None:
    """`work` on a store of a fresh engine, disposed of after it."""
    engine = create_engine(config)
    try:
        await work(ResponseStore(engine, config))
    finally:
        await engine.dispose()


def ids(chain: list[StoredResponse] | None) -> list[str]:
    assert chain is not None
    return [r.id for r in chain]


def test_save_get_and_tenants(database: DatabaseConfig) -> None:
    async def work(store: ResponseStore) -> None:
        assert await store.save(stored("resp_1"))
        assert await store.save(stored("resp_1"))  # a retried write is a no-op
        found = await store.get("resp_1", TENANT)
        assert found == stored("resp_1", created_at=found.created_at if found else 0)
        assert await store.get("resp_1", OTHER) is None
        assert await store.get("resp_nope", TENANT) is None
        assert not await store.delete("resp_1", OTHER)
        assert await store.delete("resp_1", TENANT)
        assert await store.get("resp_1", TENANT) is None
        assert not await store.delete("resp_1", TENANT)

    run(migrate.upgrade(database))
    run(in_store(database, work))


def test_a_conversation_is_its_chain_oldest_first(database: DatabaseConfig) -> None:
    async def work(store: ResponseStore) -> None:
        previous = None
        for n in range(1, 6):
            assert await store.save(stored(f"resp_{n}", previous))
            previous = f"resp_{n}"
        await store.save(stored("resp_x", "resp_2", tenant=OTHER))  # not this tenant's chain
        assert ids(await store.conversation("resp_5", TENANT)) == [
            "resp_1", "resp_2", "resp_3", "resp_4", "resp_5"
        ]  # fmt: skip
        assert ids(await store.conversation("resp_2", TENANT)) == ["resp_1", "resp_2"]
        assert await store.conversation("resp_5", OTHER) is None
        # Another tenant cannot continue into this one's chain either.
        assert ids(await store.conversation("resp_x", OTHER)) == ["resp_x"]
        # A deleted turn ends the chain there.
        assert await store.delete("resp_3", TENANT)
        assert ids(await store.conversation("resp_5", TENANT)) == ["resp_4", "resp_5"]
        chain = await store.conversation("resp_5", TENANT)
        assert chain is not None and chain[0].input_items[0]["content"][0]["text"] == (
            "input of resp_4"
        )

    run(migrate.upgrade(database))
    run(in_store(database, work))


def test_retention_deletes_old_responses(database: DatabaseConfig) -> None:
    async def work(store: ResponseStore) -> None:
        await store.save(stored("resp_old", created_at=time.time() - 3 * 86_400))
        await store.save(stored("resp_new"))
        assert await store.prune() == 1
        assert await store.get("resp_old", TENANT) is None
        assert await store.get("resp_new", TENANT) is not None

    run(migrate.upgrade(database))
    run(in_store(database.model_copy(update={"response_retention_days": 2}), work))


def test_the_table_comes_and_goes_with_its_revision(database: DatabaseConfig) -> None:
    async def work(store: ResponseStore) -> None:
        assert await store.save(stored("resp_1"))
        assert await store.get("resp_1", TENANT) is not None

    run(migrate.upgrade(database, "0003_request_payloads"))
    run(migrate.upgrade(database))
    run(in_store(database, work))
    run(migrate.downgrade(database, "0003_request_payloads"))
    assert run(migrate.current(database)) == "0003_request_payloads"
    run(migrate.upgrade(database))  # and back, empty
    run(in_store(database, check_empty))


async def check_empty(store: ResponseStore) -> None:
    assert await store.get("resp_1", TENANT) is None


def test_an_outage_holds_responses_and_writes_them_when_sql_is_back(
    postgres_server: PostgresServer,
) -> None:
    database = DatabaseConfig(url=postgres_server.create_database("stored_responses_outage"))

    async def work(store: ResponseStore) -> None:
        assert await store.save(stored("resp_1"))
        postgres_server.stop()
        try:
            started = time.monotonic()
            assert not await store.save(stored("resp_2", "resp_1"))  # held in memory
            assert not await store.save(stored("resp_3", "resp_2"))  # no SQL wait this time
            assert time.monotonic() - started < database.connect_timeout_s + 1
            assert await store.get("resp_3", TENANT) is not None
            assert await store.get("resp_3", OTHER) is None
            # Continuing needs what SQL holds: resp_1 is not readable now.
            with pytest.raises(SQL_ERRORS):
                await store.conversation("resp_3", TENANT)
        finally:
            postgres_server.start()
        await store.aclose()  # writes what it held

    async def check(store: ResponseStore) -> None:  # a store that never held them
        assert ids(await store.conversation("resp_3", TENANT)) == ["resp_1", "resp_2", "resp_3"]

    run(migrate.upgrade(database))
    run(in_store(database, work))
    run(in_store(database, check))
