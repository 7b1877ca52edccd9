"""Postgres connection pool, connected with retries so a database that is down at start waits."""

from __future__ import annotations

import asyncpg

from civicline.common.failures import shutdown_step
from civicline.common.retry import retry_forever
from civicline.common.settings import redact_url

COMMAND_TIMEOUT = 15.0


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query.

    asyncpg runs a reset (RESET ALL, UNLISTEN, advisory unlocks...) on every release: one more
    round trip per handled message. Our services keep no session state on pooled connections
    (no SET, LISTEN or session advisory locks; transactions are rolled back by the pool either
    way), so the reset does nothing but cost time.
    """

    def get_reset_query(self) -> str:
        return ""


async def connect_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    async def attempt() -> asyncpg.Pool:
        # command_timeout bounds every query: on a black-holed network a query would otherwise
        # wait for TCP to give up (minutes) while holding the message it works for.
        return await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=10,
            command_timeout=COMMAND_TIMEOUT,
            connection_class=PooledConnection,
        )

    pool: asyncpg.Pool = await retry_forever(attempt, what=f"postgres {redact_url(dsn)}")
    return pool


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close `pool` gracefully if Postgres answers in time, else drop its connections: an
    unreachable server must not hold a stopping process."""
    if not await shutdown_step("close the Postgres pool", pool.close()):
        pool.terminate()


async def pool_is_ready(pool: asyncpg.Pool | None) -> bool:
    if pool is None:
        return False
    async with pool.acquire(timeout=2) as connection:
        return bool(await connection.fetchval("SELECT true", timeout=2))
