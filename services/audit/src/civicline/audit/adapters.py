"""Postgres side of the audit log: batched, gapless appends.

Each batch takes the single log-state row FOR UPDATE, so appends from several audit replicas
are serialised and numbers stay gapless; the batch's messages are acked only after commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from civicline.audit.core import AuditRecord, number_batch

log = structlog.get_logger(__name__)

APPENDED = Counter("civicline_audit_appended_total", "Events appended to the audit log")
DUPLICATES = Counter("civicline_audit_duplicates_total", "Redelivered events not appended again")
BATCH_SIZE = Histogram(
    "civicline_audit_batch_size", "Records per audit batch", buckets=(1, 4, 16, 64, 256, 1024)
)


async def append_batch(pool: asyncpg.Pool, records: Sequence[AuditRecord]) -> int:
    """Append the records not yet logged; returns how many were new."""
    async with pool.acquire() as connection, connection.transaction():
        next_seq = await connection.fetchval(
            "SELECT next_seq FROM audit_log_state WHERE singleton FOR UPDATE"
        )
        existing = await connection.fetch(
            "SELECT event_id FROM audit_log WHERE event_id = ANY($1::uuid[])",
            [r.event_id for r in records],
        )
        numbered = number_batch(records, {row["event_id"] for row in existing}, next_seq)
        if numbered:
            await connection.execute(
                """INSERT INTO audit_log (seq, event_id, kind, occurred_at, correlation_id,
                                          schema_version, payload, raw_body, signature)
                   SELECT seq, event_id, kind, occurred_at, correlation_id,
                          schema_version, payload::json, raw_body, signature
                   FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[],
                               $5::text[], $6::int[], $7::text[], $8::bytea[], $9::text[])
                        AS t(seq, event_id, kind, occurred_at, correlation_id,
                             schema_version, payload, raw_body, signature)""",
                [seq for seq, _ in numbered],
                [r.event_id for _, r in numbered],
                [r.kind for _, r in numbered],
                [r.occurred_at for _, r in numbered],
                [r.correlation_id for _, r in numbered],
                [r.schema_version for _, r in numbered],
                [r.payload_json() for _, r in numbered],
                [r.raw_body for _, r in numbered],
                [r.signature for _, r in numbered],
            )
            await connection.execute(
                "UPDATE audit_log_state SET next_seq = $1 WHERE singleton",
                next_seq + len(numbered),
            )
    APPENDED.inc(len(numbered))
    DUPLICATES.inc(len(records) - len(numbered))
    BATCH_SIZE.observe(len(records))
    return len(numbered)


class UnstorableRecord(Exception):
    """The database refuses this record's data; retrying cannot help."""


def _settle(done: asyncio.Future[None], outcome: BaseException | None) -> None:
    if done.done():
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)


class BatchWriter:
    """Collects records from concurrent handlers into batches; each `append` returns only
    after the batch holding its record has committed (or raises if it failed)."""

    def __init__(self, pool: asyncpg.Pool, *, batch_size: int, linger: float) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._linger = linger
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-batch-writer")

    async def append(self, record: AuditRecord) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        self._has_work.set()
        if len(self._pending) >= self._batch_size:
            self._full.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            # Linger briefly so records arriving together share one transaction.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._linger)
            batch = self._pending[: self._batch_size]
            del self._pending[: self._batch_size]
            if len(self._pending) < self._batch_size:
                self._full.clear()
            if not self._pending:
                self._has_work.clear()
            await self._write(batch)

    async def _write(self, batch: list[tuple[AuditRecord, asyncio.Future[None]]]) -> None:
        try:
            await append_batch(self._pool, [record for record, _ in batch])
        except asyncpg.DataError:
            # One record the database cannot store must not keep its batch-mates out of the
            # log: write them one by one, so only the bad one fails (and is dead-lettered).
            for record, done in batch:
                try:
                    await append_batch(self._pool, [record])
                except asyncpg.DataError as exc:
                    _settle(done, UnstorableRecord(f"{type(exc).__name__}: {exc}"))
                except Exception as exc:
                    _settle(done, exc)
                else:
                    _settle(done, None)
        except Exception as exc:
            # The database is unreachable or failing: every waiter is requeued to retry.
            error = f"{type(exc).__name__}: {exc}"
            log.warning("audit_batch_failed", size=len(batch), error=error)
            for _, done in batch:
                _settle(done, exc)
        else:
            for _, done in batch:
                _settle(done, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
