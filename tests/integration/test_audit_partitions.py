"""Migration 0050: the audit log is partitioned by month of recorded_at (UTC).

What a platform team and an auditor would check: a log written before the migration keeps
every row and still verifies; new events land in this month's partition; seq and event_id
stay unique across months; each month's partition is made ahead of time by the writer,
through a function that is all the writer may do to the schema; and every partition refuses
UPDATE, DELETE and TRUNCATE, even with ordinary triggers switched off."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from civicline.audit.adapters import append_batch, append_records, sign_tree_head
from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer
from civicline.audit.core import AuditRecord
from support.audit_logs import (
    database_url_as,
    fresh_database,
    old_log_migrated,
    sample_records,
)

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("partitions.civicline.example/audit")
MAY = datetime(2026, 5, 30, 23, 59, 50, tzinfo=UTC)  # the old rows run past May's end


async def partitions(connection: asyncpg.Connection) -> dict[str, str]:
    """Each partition of audit_log and its bounds, as Postgres prints them."""
    rows = await connection.fetch(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'audit_log'::regclass"""
    )
    return {row["relname"]: row["bound"] for row in rows}


def month_name(instant: datetime) -> str:
    return f"audit_log_{instant:%Y_%m}"


def this_month_and_next() -> list[str]:
    now = datetime.now(UTC)
    following = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
    return [month_name(now), month_name(following)]


@pytest.fixture
async def upgraded_url() -> AsyncIterator[str]:
    """A log of 12 events written before 0050 (recorded from 30 May 23:59:50 to 31 May
    00:00:01), then migrated."""
    async with old_log_migrated("upgrade50", 12, MAY, written_before=50) as url:
        yield url


async def test_an_old_log_becomes_the_first_partition_and_keeps_verifying(
    upgraded_url: str,
) -> None:
    connection = await asyncpg.connect(upgraded_url)
    try:
        found = await partitions(connection)
        # The legacy rows stay where they are, up to just after the last; the rest of that
        # month, this month and the next are partitions of their own.
        assert found.pop("audit_log_legacy") == (
            "FOR VALUES FROM (MINVALUE) TO ('2026-05-31 00:00:01.000001+00')"
        )
        assert found.pop("audit_log_2026_05") == (
            "FOR VALUES FROM ('2026-05-31 00:00:01.000001+00') TO ('2026-06-01 00:00:00+00')"
        )
        assert sorted(found) == this_month_and_next()
        assert await connection.fetchval("SELECT count(*) FROM audit_log_legacy") == 12
        assert await connection.fetchval("SELECT count(*) FROM audit_event_id") == 12
        legacy_ids = [
            row["event_id"]
            for row in await connection.fetch("SELECT event_id FROM audit_log ORDER BY seq")
        ]
    finally:
        await connection.close()

    pool = await asyncpg.create_pool(upgraded_url, min_size=1, max_size=2)
    try:
        again = AuditRecord(
            event_id=legacy_ids[3],
            kind="message.voting",
            occurred_at=MAY,
            correlation_id="wamid.v1.3",
            schema_version=1,
            payload={"text": "redelivered"},
        )
        appended = await append_records(pool, [again, *sample_records(6)])
        assert (appended.new, appended.tree_size) == (6, 18)  # the redelivery is not logged
        placed = await pool.fetch(
            "SELECT tableoid::regclass::text AS part, count(*) AS n FROM audit_log "
            "GROUP BY 1 ORDER BY 1"
        )
        assert [tuple(row) for row in placed] == [
            (this_month_and_next()[0], 6),
            ("audit_log_legacy", 12),
        ]
        assert await sign_tree_head(pool, SIGNER) is not None
    finally:
        await pool.close()
    report = await verify_database(upgraded_url, SIGNER.verifier)
    assert report.ok, report.lines()


async def test_seq_and_event_id_stay_unique_across_months() -> None:
    async with fresh_database("unique50") as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            await append_batch(pool, sample_records(3))
            first = await pool.fetchrow("SELECT seq, event_id FROM audit_log WHERE seq = 0")
            await pool.execute("SELECT audit_log_ensure_months_at('2027-03-10')")
            for seq, event in ((0, uuid.uuid4()), (99, first["event_id"])):
                # a row that claims seq 0 again, or event 0's id, in another month
                with pytest.raises(asyncpg.UniqueViolationError):
                    await pool.execute(
                        """WITH registered AS (
                               INSERT INTO audit_event_id (event_id, seq, leaf_hash)
                               VALUES ($2, $1, sha256('x')))
                           INSERT INTO audit_log (seq, event_id, kind, occurred_at,
                               recorded_at, correlation_id, schema_version, payload,
                               leaf_hash)
                           VALUES ($1, $2, 'message.forged', now(), '2027-03-15', 'x', 1,
                                   '{}', sha256('x'))""",
                        seq,
                        event,
                    )
            assert await pool.fetchval("SELECT count(*) FROM audit_log") == 3
        finally:
            await pool.close()


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    async with fresh_database("months50") as url:
        yield url


async def test_a_fresh_log_has_this_month_and_the_next(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        assert sorted(await partitions(connection)) == this_month_and_next()
    finally:
        await connection.close()


async def test_the_writer_makes_each_month_once_and_nothing_else(database_url: str) -> None:
    this_month, next_month = this_month_and_next()
    owner = await asyncpg.connect(database_url)
    try:  # next month is not made yet, as on the first day of this one
        await owner.execute(f"ALTER TABLE audit_log DETACH PARTITION {next_month}")
        await owner.execute(f"DROP TABLE {next_month}")
    finally:
        await owner.close()
    writer = await asyncpg.create_pool(
        database_url_as(database_url, "civicline_writer"), min_size=4, max_size=4
    )
    try:
        # Four audit replicas write at once: one makes next month, none fails.
        await asyncio.gather(
            *(writer.execute("SELECT audit_log_ensure_months()") for _ in range(4))
        )
        await writer.execute("SELECT audit_log_ensure_months()")  # both made: a no-op
        made = await writer.fetch(
            """SELECT c.relname, pg_get_userbyid(c.relowner) AS owner
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1"""
        )
        assert [tuple(row) for row in made] == [
            (this_month, "civicline_owner"),
            (next_month, "civicline_owner"),
        ]
        # Nothing else: no month of its choosing, no table, no detaching.
        for statement in (
            "SELECT audit_log_ensure_months_at('2030-01-01')",
            "SELECT audit_log_add_partition('audit_log_x', '2030-01-01', '2030-02-01')",
            "CREATE TABLE audit_log_x (LIKE audit_log)",
            f"ALTER TABLE audit_log DETACH PARTITION {this_month}",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(statement)
    finally:
        await writer.close()


async def test_months_are_made_by_utc_month_whatever_the_session_time_zone(
    database_url: str,
) -> None:
    owner = await asyncpg.connect(database_url, server_settings={"TimeZone": "Asia/Seoul"})
    try:
        # 1 March 2027 08:30 in Seoul is still February in UTC
        await owner.execute("SELECT audit_log_ensure_months_at('2027-03-01 08:30+09')")
        await owner.execute("SET TimeZone = 'UTC'")
        bounds = await partitions(owner)
    finally:
        await owner.close()
    assert bounds["audit_log_2027_02"] == (
        "FOR VALUES FROM ('2027-02-01 00:00:00+00') TO ('2027-03-01 00:00:00+00')"
    )
    assert bounds["audit_log_2027_03"] == (
        "FOR VALUES FROM ('2027-03-01 00:00:00+00') TO ('2027-04-01 00:00:00+00')"
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {part} SET kind = 'message.tampered'",
        "DELETE FROM {part}",
        "TRUNCATE {part}",
        "TRUNCATE audit_log",
        "UPDATE audit_event_id SET seq = seq + 1",
        "TRUNCATE audit_event_id",
    ],
)
async def test_every_partition_refuses_change_even_to_a_replica_session(
    database_url: str, statement: str
) -> None:
    """The owner's session with ordinary triggers off (session_replication_role = replica,
    as a logical-replication apply would run) still meets ALWAYS triggers on each month."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await append_batch(pool, sample_records(2))
        part = this_month_and_next()[0]
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await connection.execute(statement.format(part=part))
        assert await pool.fetchval(f"SELECT count(*) FROM {part}") > 0  # noqa: S608
    finally:
        await pool.close()
