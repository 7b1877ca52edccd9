"""The shared connection pool releases connections without asyncpg's reset query; pin that a
released connection still comes back clean: no open transaction, no lock held."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from civicline.common.db import connect_pool
from support.isolation import create_database, drop_database, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    name = unique_name("pool")
    url = await create_database(name, migrated=False)
    pool = await connect_pool(url, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()
        await drop_database(name)


async def test_a_connection_released_mid_transaction_comes_back_outside_it(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as connection:
        await connection.execute("CREATE TABLE t (id int PRIMARY KEY)")
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("INSERT INTO t VALUES (1)")
        # released without commit or rollback, as a handler cut short would leave it

    async with pool.acquire() as connection:  # max_size 1: the same connection
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT count(*) FROM t") == 0
        locks = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'relation'"
            " AND relation = 't'::regclass AND pid <> pg_backend_pid()"
        )
        assert locks == 0
