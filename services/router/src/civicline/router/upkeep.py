"""The router's upkeep: WhatsApp ids it has seen are forgotten once Meta can no longer
redeliver them, so the dedup table stays the size of a week's traffic, not of all time."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Meta retries a webhook for up to 7 days (reference §9); a day more for clocks and backlogs.
KEEP_SEEN = timedelta(days=8)
# Rows deleted per statement, so no one transaction holds a long lock or a big undo.
FORGET_BATCH = 10_000
# How often a router looks for ids to forget (and once as it starts).
FORGET_INTERVAL = 600.0


async def forget_seen(pool: asyncpg.Pool, before: datetime, limit: int) -> int:
    """Delete up to `limit` dedup keys first seen before `before`; returns how many."""
    status = await pool.execute(
        """DELETE FROM router_seen WHERE dedup_key IN (
               SELECT dedup_key FROM router_seen WHERE first_seen_at < $1
               ORDER BY first_seen_at LIMIT $2)""",
        before,
        limit,
    )
    return int(status.split()[-1])


async def forget_all_seen(pool: asyncpg.Pool, before: datetime) -> int:
    """Delete every dedup key first seen before `before`, a batch at a time."""
    total = 0
    while (deleted := await forget_seen(pool, before, FORGET_BATCH)) > 0:
        total += deleted
        if deleted < FORGET_BATCH:
            break
    return total


class SeenForgetter:
    """Runs beside the consumer in every replica (their deletes of the same rows are
    harmless); a failed round, in an outage, is tried again at the next."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = FORGET_INTERVAL) -> None:
        self._pool = pool
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="router-forget-seen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                now = await self._pool.fetchval("SELECT now()")
                forgotten = await forget_all_seen(self._pool, now - KEEP_SEEN)
            except Exception as exc:  # an outage: the next round tries again
                log.warning("router_forget_seen_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                if forgotten:
                    log.info("router_forgot_seen", keys=forgotten, older_than=str(KEEP_SEEN))
            await asyncio.sleep(self._interval)
