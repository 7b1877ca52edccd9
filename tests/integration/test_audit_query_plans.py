"""The query API's filters are served by indexes, not by reading the log: the plans Postgres
chooses for the exact queries the API sends (query.page_sql), on a log of 20,000 events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from civicline.audit.adapters import append_batch
from civicline.audit.auditor import COLUMNS
from civicline.audit.core import AuditRecord
from civicline.audit.query import EventFilter, page_sql
from support.audit_api import KEYS
from support.audit_logs import fresh_database

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
            await connection.execute("ANALYZE audit_log")
            yield connection
        finally:
            await connection.close()


def scans(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    found = [(plan["Node Type"], plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


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
    [plan] = orjson.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
    used = scans(plan["Plan"])
    print(sql, used)
    assert ("Seq Scan", None) not in used, used
    assert any(name and name.startswith(index) for _, name in used), used


async def test_a_later_page_starts_at_its_cursor(connection: asyncpg.Connection) -> None:
    sql, args = page_sql(COLUMNS, EventFilter(kind="status.read"), EVENTS // 2, 100)
    [plan] = orjson.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
    used = scans(plan["Plan"])
    assert ("Seq Scan", None) not in used, used
