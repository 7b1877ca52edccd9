"""Retiring a month of the audit log, the owner's act (docs/audit-log.md, "Retention").

A month is retired in three steps, each of which must succeed before the next:
  1. its events are exported, in their stored (sealed) form, with the range proof that ties
     them to a signed tree head, and the file is verified with the public key alone;
  2. under the log lock, its partition is detached from `audit_log`;
  3. in the same transaction, an `audit.retention` event records the seq range, the export's
     SHA-256 and who asked.

The detached table stays in the database for the owner to archive (pg_dump) and drop. The
retired events' leaf hashes stay in audit_event_id, so proofs of every event kept, and the
verification of the whole log, go on working.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson

from civicline.audit import adapters, auditor
from civicline.audit.checkpoint import Verifier
from civicline.audit.views import retention_record

# How long detaching may wait for readers of the log (an export in progress) before giving up.
DETACH_LOCK_TIMEOUT = "10s"


class RetentionError(Exception):
    """The month cannot be retired as asked; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Month:
    """A partition of the audit log, as `civicline-audit months` lists it."""

    partition: str
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
    SELECT c.relname AS partition,
           nullif((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1],
                  '')::timestamptz AS low,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]
               ::timestamptz AS high,
           pg_total_relation_size(c.oid) AS size_bytes
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_log'::regclass"""


async def _seq_range(
    connection: asyncpg.Connection, partition: str
) -> tuple[int, int | None, int | None]:
    row = await connection.fetchrow(
        f'SELECT count(*) AS n, min(seq) AS first, max(seq) + 1 AS end FROM "{partition}"'  # noqa: S608 (a name read from the catalog)
    )
    assert row is not None
    return row["n"], row["first"], row["end"]


async def months(connection: asyncpg.Connection) -> list[Month]:
    """Every partition of the log, oldest first, with its events and seq range."""
    found = []
    for row in await connection.fetch(_MONTHS + " ORDER BY high"):
        events, first, end = await _seq_range(connection, row["partition"])
        found.append(
            Month(row["partition"], row["low"], row["high"], events, first, end, row["size_bytes"])
        )
    return found


async def _month(connection: asyncpg.Connection, partition: str) -> Month:
    for month in await months(connection):
        if month.partition == partition:
            return month
    raise RetentionError(f"{partition!r} is not a partition of audit_log (see: months)")


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
        with out.open("wb") as file:
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
        await _export(connection, first, end, out)
        report = auditor.verify_export(out, verifier)
        if not report.ok or report.events != end - first or not report.verified_size:
            raise RetentionError(
                f"the export {out} does not verify, so {partition} stays: "
                + "; ".join(report.lines())
            )
        digest = _sha256(out)
        async with connection.transaction():
            locked = await adapters.lock_log(connection)
            # Rows are never removed, and a month that is over gains none unless the clock
            # was set back: its first and last seq (read from the primary key, not by
            # counting, since writers wait on this lock) show any change.
            bounds = await connection.fetchrow(
                f'SELECT min(seq) AS first, max(seq) + 1 AS end FROM "{partition}"'  # noqa: S608 (a name read from the catalog)
            )
            if bounds is None or (bounds["first"], bounds["end"]) != (first, end):
                raise RetentionError(f"{partition} changed while it was exported: try again")
            await connection.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
            await connection.execute(f'ALTER TABLE audit_log DETACH PARTITION "{partition}"')
            record = retention_record(
                partition=partition,
                first_seq=first,
                end_seq=end,
                export_sha256=digest,
                requested_by=requested_by,
                at=locked.now,
            )
            seq = locked.next_seq
            await adapters.append_locked(connection, locked, [record])
    finally:
        await connection.close()
    return Retirement(partition, first, end, digest, seq)
