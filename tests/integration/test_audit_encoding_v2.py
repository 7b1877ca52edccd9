"""A log written before migration 0030 (encoding v1) keeps verifying once sealed v2 rows follow
it, and the SQL audit_leaf_hash() recomputes every stored leaf of both versions, ciphertext
included, so an auditor in psql finds no row edited in place."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from civicline.audit.adapters import append_records, sign_tree_head
from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer
from civicline.audit.core import AuditRecord
from support.audit_api import KEYS
from support.audit_logs import old_log_migrated

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("v2.civicline.example/audit")
AT = datetime(2026, 7, 18, 9, 0, tzinfo=UTC)


def citizen_events(count: int) -> list[AuditRecord]:
    return [
        AuditRecord(
            event_id=uuid.uuid4(),
            kind="inbound.webhook" if n % 3 == 0 else "message.voting",
            occurred_at=AT,
            correlation_id=f"wamid.v2.{n}",
            schema_version=1,
            payload={"from": f"8210{n % 4:08d}", "text": "대피소", "intent": "shelter"},
            raw_body=(
                f'{{"contacts":[{{"wa_id":"8210{n % 4:08d}"}}]}}'.encode() if n % 3 == 0 else None
            ),
            signature="sha256=11" if n % 3 == 0 else None,
        )
        for n in range(count)
    ]


async def test_v1_rows_then_sealed_v2_rows_verify_and_match_the_sql_leaf() -> None:
    async with old_log_migrated("v2", 5, AT, written_before=30) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            appended = await append_records(pool, citizen_events(12), KEYS)
            assert appended.tree_size == 17
            assert await sign_tree_head(pool, SIGNER) is not None
            versions = await pool.fetch(
                "SELECT leaf_version, count(*) AS n, count(sealed_payload) AS sealed"
                " FROM audit_log GROUP BY leaf_version ORDER BY leaf_version"
            )
            assert [tuple(row) for row in versions] == [(1, 5, 0), (2, 12, 12)]
            edited = await pool.fetchval(
                "SELECT count(*) FROM audit_log a WHERE leaf_hash <> audit_leaf_hash(a)"
            )
            assert edited == 0
        finally:
            await pool.close()
        report = await verify_database(url, SIGNER.verifier)
        assert report.ok, report.lines()
