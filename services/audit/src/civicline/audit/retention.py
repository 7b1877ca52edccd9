"""Retiring a month of the audit log, the owner's act (docs/audit-log.md, "Retention").

A month is retired in three steps, each of which must succeed before the next:
  1. its events are exported, in their stored (sealed) form, with the range proof that ties
     them to a signed tree head, and the file is verified with the public key alone;
  2. under the log lock, its partition is detached from `audit_log`;
  3. in the same transaction, an `audit.retention` event records the seq range, the month's
     bounds, every range retired so far, the export's SHA-256 and who asked.

The file takes its name only once the month is retired. The detached table stays in the
database, still refusing changes, for the owner to archive (pg_dump) and drop. The retired
events' leaf hashes stay in audit_event_id, so proofs of every event kept, and the
verification of the whole log, go on working.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson

from civicline.audit import adapters, auditor
from civicline.audit.checkpoint import Verifier
from civicline.audit.query import RETENTION_KIND
from civicline.audit.views import retention_record

# How long detaching may wait for readers of the log (an export in progress) before giving up.
DETACH_LOCK_TIMEOUT = "10s"


class RetentionError(Exception):
    """The month cannot be retired as asked; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Month:
    """A partition of the audit log, as `civicline-audit months` lists it."""

    partition: str
    table: str  # the partition as SQL names it (quoted and qualified as needed)
    low: datetime | None  # None: from the beginning (the legacy partition)
    high: datetime
    events: int
    first_seq: int | None
    end_seq: int | None
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Retirement:
    partition: str
    first_seq: int
    end_seq: int
    export_sha256: str
    seq: int  # of the audit.retention event


_MONTHS = """
    SELECT c.relname AS partition, c.oid::regclass::text AS table_name,
           nullif((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1],
                  '')::timestamptz AS low,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]
               ::timestamptz AS high,
           pg_total_relation_size(c.oid) AS size_bytes
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_log'::regclass"""


async def _seq_range(
    connection: asyncpg.Connection, table: str
) -> tuple[int, int | None, int | None]:
    row = await connection.fetchrow(
        f"SELECT count(*) AS n, min(seq) AS first, max(seq) + 1 AS end FROM {table}"  # noqa: S608 (a name the catalog gave)
    )
    assert row is not None
    return row["n"], row["first"], row["end"]


async def months(connection: asyncpg.Connection, partition: str | None = None) -> list[Month]:
    """Every partition of the log (or only the one named), oldest first, with its events and
    seq range. Each is counted: at millions of events a month, name the one you want."""
    found = []
    for row in await connection.fetch(
        _MONTHS + " AND ($1::text IS NULL OR c.relname = $1) ORDER BY high", partition
    ):
        events, first, end = await _seq_range(connection, row["table_name"])
        found.append(
            Month(
                row["partition"],
                row["table_name"],
                row["low"],
                row["high"],
                events,
                first,
                end,
                row["size_bytes"],
            )
        )
    return found


async def _month(connection: asyncpg.Connection, partition: str) -> Month:
    found = await months(connection, partition)
    if not found:
        raise RetentionError(f"{partition!r} is not a partition of audit_log (see: months)")
    return found[0]


async def _export(connection: asyncpg.Connection, first: int, end: int, out: Path) -> None:
    """Write events [first, end) in stored form, with the range proof against the latest
    signed head, as the query API's /v1/export does (without opened payloads)."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        next_seq = await adapters.tree_size(connection)
        head = await adapters.latest_tree_head(connection)
        if head is None or head.tree_size < end:
            raise RetentionError(
                f"no signed tree head covers seq {end - 1} yet: run `civicline-audit "
                "checkpoint` first, so the export can be proven"
            )
        with out.open("xb") as file:
            for line in await auditor.range_preamble(connection, first, end, next_seq, head):
                file.write(orjson.dumps(line) + b"\n")
            async for row in connection.cursor(
                f"{auditor.ROWS} WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                first,
                end,
                prefetch=5000,
            ):
                file.write(orjson.dumps(auditor.export_line(row)) + b"\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _export_verified(
    connection: asyncpg.Connection,
    month: Month,
    seqs: tuple[int, int],
    out: Path,
    verifier: Verifier,
) -> str:
    """Export the month's seqs [first, end) and verify the file as an auditor would; its
    SHA-256."""
    first, end = seqs
    await _export(connection, first, end, out)
    report = auditor.verify_export(out, verifier)
    if not report.ok or report.events != end - first or not report.verified_size:
        raise RetentionError(
            f"the export does not verify, so {month.partition} stays: " + "; ".join(report.lines())
        )
    return _sha256(out)


async def _detach_and_record(
    connection: asyncpg.Connection,
    month: Month,
    seqs: tuple[int, int],
    digest: str,
    requested_by: str,
) -> int:
    """Under the log lock: detach the month, keep the detached table append-only, and log
    audit.retention for its seqs [first, end); the event's seq."""
    first, end = seqs
    async with connection.transaction():
        locked = await adapters.lock_log(connection)
        # Rows are never removed, and a month that is over gains none unless the clock was
        # set back: its first and last seq (read from the primary key, not by counting,
        # since writers wait on this lock) show any change.
        bounds = await connection.fetchrow(
            f"SELECT min(seq) AS first, max(seq) + 1 AS end FROM {month.table}"  # noqa: S608 (a name the catalog gave)
        )
        if bounds is None or (bounds["first"], bounds["end"]) != seqs:
            raise RetentionError(f"{month.partition} changed while it was exported: try again")
        already = await auditor.retired_ranges(connection)
        await connection.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
        try:
            await connection.execute(f"ALTER TABLE audit_log DETACH PARTITION {month.table}")
        except asyncpg.LockNotAvailableError:
            raise RetentionError(
                f"readers of the log held it for {DETACH_LOCK_TIMEOUT} (an export?): "
                f"{month.partition} stays; try again"
            ) from None
        # Detaching drops the triggers the partition had from the log: until the owner has
        # archived and dropped it, the table keeps refusing changes.
        await connection.execute(
            f"CREATE TRIGGER audit_log_refuse_update_delete BEFORE UPDATE OR DELETE "
            f"ON {month.table} FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        await connection.execute(
            f"ALTER TABLE {month.table} ENABLE ALWAYS TRIGGER audit_log_refuse_update_delete"
        )
        record = retention_record(
            partition=month.partition,
            first_seq=first,
            end_seq=end,
            recorded_from=month.low,
            recorded_until=month.high,
            retired=sorted([*already, seqs]),
            export_sha256=digest,
            requested_by=requested_by,
            at=locked.now,
        )
        seq = locked.next_seq
        await adapters.append_locked(connection, locked, [record])
    return seq


async def _retention_recorded(database_url: str, digest: str) -> int | None:
    """The seq of the audit.retention event naming this export, if it was committed."""
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        seq = await connection.fetchval(
            """SELECT seq FROM audit_log WHERE kind = $1
               AND payload::jsonb ->> 'export_sha256' = $2""",
            RETENTION_KIND,
            digest,
        )
    finally:
        await connection.close()
    return None if seq is None else int(seq)


async def retire_month(
    database_url: str, partition: str, out: Path, verifier: Verifier, *, requested_by: str
) -> Retirement:
    """Export, verify, detach and record one past month (see the module's docstring). Run
    as the log's owner: detaching is DDL."""
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        month = await _month(connection, partition)
        now = await connection.fetchval("SELECT clock_timestamp()")
        if month.high > now:
            raise RetentionError(f"{partition} is not over yet (it runs to {month.high})")
        if month.first_seq is None or month.end_seq is None:
            raise RetentionError(f"{partition} holds no events: nothing to retire")
        first, end = month.first_seq, month.end_seq
        if month.events != end - first:
            raise RetentionError(
                f"{partition} holds {month.events} events but seqs {first} to {end - 1}: "
                "run `civicline-audit verify` before retiring anything"
            )
        # The archive is written beside its name and takes it only once the month is
        # retired: a file under that name is always the archive of a retirement.
        partial = out.with_name(out.name + ".partial")
        try:
            digest = await _export_verified(connection, month, (first, end), partial, verifier)
        except FileExistsError:
            raise RetentionError(
                f"{partial} exists: another retire is writing it, or one was killed; "
                "remove it and try again"
            ) from None
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        try:
            seq = await _detach_and_record(connection, month, (first, end), digest, requested_by)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            # The commit may have landed before the connection broke: ask the log.
            found = await _retention_recorded(database_url, digest)
            if found is None:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise
            seq = found
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        await asyncio.to_thread(partial.rename, out)
    finally:
        await connection.close()
    return Retirement(partition, first, end, digest, seq)
