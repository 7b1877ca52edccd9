"""The Merkle log in the real Postgres: proofs read from stored subtrees equal the RFC 6962
proofs of the same leaves, the SQL leaf function agrees with the Python one, rows written
before migration 0004 join the tree, and tree heads are signed once per size, never only
because checkpoint events were logged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from civicline.audit import adapters, merkle
from civicline.audit.adapters import append_batch, append_records, sign_tree_head
from civicline.audit.auditor import check_consistency, check_inclusion, verify_database
from civicline.audit.checkpoint import Signer, open_checkpoint
from civicline.audit.checkpointer import Checkpointer
from civicline.audit.core import AUDIT_CHECKPOINT, AuditRecord
from civicline.common import migrate as migrations
from civicline.common.envelope import SCHEMA_VERSION
from support.audit_logs import fresh_database, migrate_below, sample_records

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("test.civicline.example/audit")


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    """A database of the module's own; these tests need no broker (so no vhost)."""
    async with fresh_database("merkle") as url:
        yield url


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


async def all_leaves(connection: asyncpg.Connection) -> list[bytes]:
    return [
        r["leaf_hash"]
        for r in await connection.fetch("SELECT leaf_hash FROM audit_log ORDER BY seq")
    ]


async def test_proofs_from_stored_subtrees_equal_the_rfc_proofs(pool: asyncpg.Pool) -> None:
    records = sample_records(300)
    for start in range(0, len(records), 37):  # uneven batches
        await append_batch(pool, records[start : start + 37])
    async with pool.acquire() as connection:
        leaves = await all_leaves(connection)
        size = len(leaves)
        assert size >= 300
        levels = {r["level"] for r in await connection.fetch("SELECT level FROM audit_subtree")}
        assert levels == {4, 8}
        assert await adapters.tree_size(connection) == size
        perfect = merkle.perfect_from_leaves(leaves)
        for tree_size in (1, 2, 15, 16, 17, 255, 256, 257, size):
            for index in {0, tree_size // 3, tree_size - 1}:
                assert await adapters.inclusion_proof(
                    connection, index, tree_size
                ) == merkle.inclusion_proof(index, tree_size, perfect)
            for first in {0, 1, min(16, tree_size), tree_size // 2, tree_size - 1, tree_size}:
                assert await adapters.consistency_proof(
                    connection, first, tree_size
                ) == merkle.consistency_proof(first, tree_size, perfect)
        with pytest.raises(merkle.ProofError, match="not reached"):
            await adapters.inclusion_proof(connection, 0, size + 1)


async def test_the_sql_leaf_function_agrees_with_the_canonical_encoding(pool: asyncpg.Pool) -> None:
    awkward = [
        AuditRecord(
            event_id=uuid.uuid4(),
            kind="message.voting",
            occurred_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            correlation_id="투표소",
            schema_version=SCHEMA_VERSION,
            payload={"text": "vote\x00here 投票", "n": [1, 2.5, None]},
            raw_body=bytes(range(256)),
            signature="sha256=" + "0f" * 32,
        ),
        AuditRecord(
            event_id=uuid.uuid4(),
            kind="status.read",
            occurred_at=datetime.now(UTC),
            correlation_id="",
            schema_version=SCHEMA_VERSION,
            payload={},
            raw_body=b"",
            signature="",
        ),
    ]
    await append_batch(pool, awkward)
    rows = await pool.fetch(
        """SELECT seq, leaf_hash = audit_leaf_hash(a) AS same
           FROM audit_log a WHERE event_id = ANY($1::uuid[])""",
        [r.event_id for r in awkward],
    )
    assert [row["same"] for row in rows] == [True, True]


async def test_tree_heads_are_signed_once_per_size_and_not_for_checkpoint_events(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await append_batch(pool, sample_records(3))
    head = await sign_tree_head(pool, SIGNER)
    assert head is not None
    checkpoint = open_checkpoint(head.checkpoint, SIGNER.verifier)
    async with pool.acquire() as connection:
        assert checkpoint.root_hash == merkle.root(await all_leaves(connection))
        assert checkpoint.tree_size == head.tree_size == await adapters.tree_size(connection)
    assert await sign_tree_head(pool, SIGNER) is None
    assert await sign_tree_head(pool, SIGNER, forced=True) is None

    # The head's own event comes back through the bus and is logged: that alone is no reason
    # for another head (or each head would cause the next, forever).
    echo = sample_records(1, kind=AUDIT_CHECKPOINT, raw_webhooks=False)
    assert (await append_records(pool, echo)).new == 1
    assert await sign_tree_head(pool, SIGNER) is None
    forced = await sign_tree_head(pool, SIGNER, forced=True)
    assert forced is not None
    assert forced.tree_size == head.tree_size + 1

    await append_batch(pool, sample_records(2))
    checkpointer = Checkpointer(
        pool, SIGNER, publisher=None, interval=60, every=1, directory=str(tmp_path)
    )
    written = await checkpointer.sign_once()
    assert written is not None
    assert (tmp_path / "latest.checkpoint").read_text() == written.checkpoint
    assert (tmp_path / f"{written.tree_size:020d}.checkpoint").read_text() == written.checkpoint


async def test_inclusion_and_consistency_checks_hold_for_a_clean_log(
    database_url: str, pool: asyncpg.Pool
) -> None:
    await append_batch(pool, sample_records(20))
    first = await sign_tree_head(pool, SIGNER, forced=True)
    await append_batch(pool, sample_records(40))
    second = await sign_tree_head(pool, SIGNER, forced=True)
    assert first is not None
    assert second is not None
    url = database_url

    included = await check_inclusion(
        url, SIGNER.verifier, first.checkpoint, seq=first.tree_size - 1
    )
    assert included.tree_size == first.tree_size
    event_id = included.event_id
    by_id = await check_inclusion(url, SIGNER.verifier, second.checkpoint, event_id=event_id)
    assert by_id.seq == first.tree_size - 1
    with pytest.raises(merkle.ProofError):
        await check_inclusion(url, SIGNER.verifier, first.checkpoint, seq=first.tree_size)

    consistent = await check_consistency(url, SIGNER.verifier, first.checkpoint)
    assert (consistent.first_size, consistent.second_size) == (first.tree_size, second.tree_size)
    with pytest.raises(merkle.ProofError, match="shrank"):
        await check_consistency(url, SIGNER.verifier, second.checkpoint, first.checkpoint)

    report = await verify_database(url, SIGNER.verifier, (first.checkpoint,))
    assert report.ok, report.lines()


async def test_rows_written_before_the_merkle_migration_join_the_tree() -> None:
    async with fresh_database("legacy", migrate=False) as url:
        connection = await asyncpg.connect(url)
        try:
            await migrate_below(connection, 4)
            await connection.execute(
                """INSERT INTO audit_log (seq, event_id, kind, occurred_at, correlation_id,
                                          schema_version, payload, raw_body, signature)
                   VALUES
                     (0, $1, 'inbound.webhook', now(), 'c0', 1, '{"bytes": 3}', 'abc', 's'),
                     (1, $2, 'message.voting', now(), 'c1', 1, '{"text":"투표"}', NULL, NULL)""",
                uuid.uuid4(),
                uuid.uuid4(),
            )
            await connection.execute("UPDATE audit_log_state SET next_seq = 2")
            await migrations.migrate(connection)
            assert await adapters.tree_size(connection) == 0  # folded in by the next writer
        finally:
            await connection.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            appended = await append_records(pool, sample_records(18))
            assert appended.tree_size == 20
            head = await sign_tree_head(pool, SIGNER)
            assert head is not None
            assert head.tree_size == 20
        finally:
            await pool.close()
        report = await verify_database(url, SIGNER.verifier)
        assert report.ok, report.lines()
