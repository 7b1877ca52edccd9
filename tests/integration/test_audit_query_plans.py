"""The query API's filters are served by indexes, not by reading the log: the plans Postgres
chooses for the exact queries the API sends (query.page_sql), on a log of 20,000 events
recorded this month and copies of them in three earlier months' partitions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from civicline.audit.adapters import append_batch
from civicline.audit.api import FIRST_RECORDED_FROM
from civicline.audit.auditor import COLUMNS, EVENT_AT, SEQ_OF_EVENT, event_row
from civicline.audit.core import AuditRecord
from civicline.audit.query import EventFilter, page_sql
from support.audit_api import KEYS
from support.audit_logs import fresh_database
from support.plans import rows_read

pytestmark = pytest.mark.integration

EVENTS = 20_000
START = datetime(2026, 7, 1, tzinfo=UTC)
KINDS = ["message.voting", "outbound.sent", "status.delivered", "status.read", "message.shelter"]


def records(first: int, count: int) -> list[AuditRecord]:
    result = []
    for n in range(first, first + count):
        kind = "outbound.failed" if n % 997 == 0 else KINDS[n % len(KINDS)]
        intent = "report_abuse" if n % 503 == 0 else "voting"
        result.append(
            AuditRecord(
                event_id=uuid.UUID(int=n + 1),
                kind=kind,
                occurred_at=START + timedelta(seconds=30 * n),
                correlation_id=f"wamid.{n // 4}",
                schema_version=1,
                payload={"from": f"8210{n % 2000:08d}", "intent": intent, "text": "투표"},
            )
        )
    return result


@pytest.fixture(scope="module")
async def connection() -> AsyncIterator[asyncpg.Connection]:
    async with fresh_database("plans") as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        try:
            for first in range(0, EVENTS, 5000):
                await append_batch(pool, records(first, 5000), KEYS)
        finally:
            await pool.close()
        connection = await asyncpg.connect(url)
        try:
            await fill_earlier_months(connection)
            # What autovacuum does: it analyses each month, never the partitioned table itself,
            # so the plans must hold without statistics of the whole log.
            for month in await populated(connection):
                await connection.execute(f"ANALYZE {month}")
            yield connection
        finally:
            await connection.close()


async def fill_earlier_months(connection: asyncpg.Connection) -> None:
    """The writer records every event now, so earlier months are filled here, as the owner:
    the same rows again at later seqs, recorded in each month (their leaves do not verify,
    which no plan looks at)."""
    for copy, month in enumerate(EARLIER_MONTHS, start=1):
        await connection.execute("SELECT audit_log_ensure_months_at($1)", month)
        await connection.execute(
            """INSERT INTO audit_log
               SELECT seq + $1, gen_random_uuid(), kind, occurred_at,
                      $2::timestamptz + seq * interval '1 second', correlation_id,
                      schema_version, payload, raw_body, signature, leaf_hash, leaf_version,
                      intent, subjects, key_ids, sealed_payload
               FROM audit_log WHERE seq < $3""",
            copy * EVENTS,
            month,
            EVENTS,
        )


EARLIER_MONTHS = [datetime(2026, month, 1, tzinfo=UTC) for month in (8, 9, 10)]


def scans(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index or table) of every node of a plan."""
    found = [(plan["Node Type"], plan.get("Index Name") or plan.get("Relation Name"))]
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


async def populated(connection: asyncpg.Connection) -> set[str]:
    """The partitions of audit_log that hold rows (an empty one may be read whole: it is
    nothing)."""
    names = await connection.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits "
        "WHERE inhparent = 'audit_log'::regclass"
    )
    return {
        row["name"]
        for row in names
        if await connection.fetchval(f"SELECT EXISTS (SELECT FROM {row['name']})")  # noqa: S608
    }


async def partitioned_index_of(connection: asyncpg.Connection) -> dict[str, str]:
    """Each partition's index: the audit_log index it is part of."""
    rows = await connection.fetch(
        """SELECT i.inhrelid::regclass::text AS part, i.inhparent::regclass::text AS whole
           FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhparent
           WHERE x.indrelid = 'audit_log'::regclass"""
    )
    return {row["part"]: row["whole"] for row in rows}


async def assert_no_scan_of_a_whole_month(
    connection: asyncpg.Connection, used: list[tuple[str, str | None]]
) -> None:
    months = await populated(connection)
    assert len(months) == 1 + len(EARLIER_MONTHS)
    assert not [name for node, name in used if node == "Seq Scan" and name in months], used


@pytest.mark.parametrize(
    ("selected", "index"),
    [
        (EventFilter(subject=KEYS.pseudonymise("821000000042")), "audit_log_subjects_idx"),
        # a rare kind: either index on kind serves it
        (EventFilter(kind="outbound.failed"), "audit_log_kind_"),
        (EventFilter(intent="report_abuse"), "audit_log_intent_seq_idx"),
        (EventFilter(correlation_ids=("wamid.77",)), "audit_log_correlation_seq_idx"),
        (
            EventFilter(
                since=START + timedelta(days=2), until=START + timedelta(days=2, minutes=30)
            ),
            "audit_log_occurred_idx",
        ),
        (
            EventFilter(subject=KEYS.pseudonymise("821000000042"), kind="status.read"),
            "audit_log_subjects_idx",
        ),
    ],
)
async def test_each_filter_uses_its_index(
    connection: asyncpg.Connection, selected: EventFilter, index: str
) -> None:
    sql, args = page_sql(COLUMNS, selected, -1, 100)
    [plan] = orjson.loads(await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
    used = scans(plan["Plan"])
    print(sql, used)
    await assert_no_scan_of_a_whole_month(connection, used)
    # Not a walk along an index either: a page reads a few hundred of the log's 80,000 rows.
    assert rows_read(plan["Plan"]) <= 2000, plan
    # each month's partition has its own copy of the index, named after its columns
    of_log = await partitioned_index_of(connection)
    assert any(name and of_log.get(name, "").startswith(index) for _, name in used), used


async def test_a_later_page_starts_at_its_cursor(connection: asyncpg.Connection) -> None:
    sql, args = page_sql(COLUMNS, EventFilter(kind="status.read"), EVENTS // 2, 100)
    [plan] = orjson.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
    await assert_no_scan_of_a_whole_month(connection, scans(plan["Plan"]))


async def test_an_export_of_a_day_reads_only_the_months_from_that_day_on(
    connection: asyncpg.Connection,
) -> None:
    two_in_the_morning = datetime(2026, 9, 1, 2, tzinfo=UTC)
    [plan] = orjson.loads(
        await connection.fetchval(
            f"EXPLAIN (FORMAT JSON) {FIRST_RECORDED_FROM}", two_in_the_morning
        )
    )
    read = {name for _, name in scans(plan["Plan"]) if name}
    assert not [name for name in read if name.startswith("audit_log_2026_08")], read
    assert [name for name in read if name.startswith("audit_log_2026_09")], read
    # September's copy was recorded one event a second from midnight: 7,200 events before 2:00
    assert await connection.fetchval(FIRST_RECORDED_FROM, two_in_the_morning) == (2 * EVENTS + 7200)


async def test_an_event_is_found_by_its_id_through_two_index_lookups(
    connection: asyncpg.Connection,
) -> None:
    """GET /v1/events/<event id>: the months have no index on event_id (a scan of each would
    read the whole log), so the id is looked up in audit_event_id, then the row by its seq."""
    event_id = uuid.UUID(int=78)  # records() numbers event ids from 1: seq 77
    for sql, argument in ((SEQ_OF_EVENT, event_id), (EVENT_AT, 77)):
        [plan] = orjson.loads(
            await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", argument)
        )
        assert rows_read(plan["Plan"]) <= 10, plan
    row = await event_row(connection, event_id)
    assert row is not None
    assert (row["seq"], row["event_id"]) == (77, event_id)
    assert await event_row(connection, uuid.UUID(int=10**9)) is None
