"""The router forgets the WhatsApp ids it has seen once Meta can no longer redeliver them
(8 days; Meta retries for up to 7), a batch at a time, and never a newer one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from civicline.router import upkeep
from civicline.router.upkeep import KEEP_SEEN, SeenForgetter, forget_all_seen, forget_seen
from support.isolation import Environment, EnvironmentFactory
from support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def environment(environments: EnvironmentFactory) -> Environment:
    return await environments("router_upkeep")


@pytest.fixture
async def pool(environment: Environment) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=2)
    await pool.execute("DELETE FROM router_seen")
    yield pool
    await pool.close()


async def seen(pool: asyncpg.Pool, prefix: str, count: int, age: timedelta) -> None:
    await pool.execute(
        """INSERT INTO router_seen (dedup_key, first_seen_at)
           SELECT $1 || n, now() - $3::interval FROM generate_series(1, $2) AS n""",
        prefix,
        count,
        age,
    )


async def keys(pool: asyncpg.Pool) -> set[str]:
    return {row["dedup_key"] for row in await pool.fetch("SELECT dedup_key FROM router_seen")}


async def test_only_ids_older_than_the_cutoff_are_forgotten_a_batch_at_a_time(
    pool: asyncpg.Pool,
) -> None:
    await seen(pool, "message:old.", 25, KEEP_SEEN + timedelta(hours=1))
    await seen(pool, "message:new.", 5, KEEP_SEEN - timedelta(hours=1))
    cutoff = await pool.fetchval("SELECT now()") - KEEP_SEEN
    assert await forget_seen(pool, cutoff, limit=10) == 10
    assert len(await keys(pool)) == 20
    assert await forget_all_seen(pool, cutoff) == 15
    assert await keys(pool) == {f"message:new.{n}" for n in range(1, 6)}


async def test_more_than_a_batch_is_forgotten_in_one_round(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "FORGET_BATCH", 7)
    await seen(pool, "status:old.", 30, KEEP_SEEN + timedelta(days=1))
    cutoff = await pool.fetchval("SELECT now()") - KEEP_SEEN
    assert await forget_all_seen(pool, cutoff) == 30
    assert await keys(pool) == set()


async def test_the_router_forgets_old_ids_as_it_starts_and_then_every_round(
    pool: asyncpg.Pool,
) -> None:
    await seen(pool, "message:old.", 3, KEEP_SEEN + timedelta(minutes=5))
    await seen(pool, "message:new.", 2, timedelta(minutes=5))
    forgetter = SeenForgetter(pool, interval=0.1)
    forgetter.start()
    try:

        async def only_new_left() -> bool:
            return await keys(pool) == {"message:new.1", "message:new.2"}

        await eventually(only_new_left, what="the old ids forgotten", timeout=10)
        # A second round, an id that aged past the cutoff meanwhile.
        await seen(pool, "message:aged.", 1, KEEP_SEEN + timedelta(seconds=1))
        await eventually(only_new_left, what="the next round", timeout=10)
    finally:
        await forgetter.stop()
