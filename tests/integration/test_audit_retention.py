"""Retiring a past month (civicline-audit retire): the month is exported in a file that
verifies with the public key alone, detached, and recorded as an audit.retention event; the
log that stays still verifies, with proofs for every event kept, even those whose audit path
runs through the retired month, and a month detached without that record is caught."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from civicline.audit import retention
from civicline.audit.adapters import append_batch, latest_tree_head, sign_tree_head
from civicline.audit.auditor import (
    check_consistency,
    check_inclusion,
    export_database,
    verify_database,
    verify_export,
)
from civicline.audit.checkpoint import Signer
from civicline.audit.verify import Problem
from support.audit_logs import (
    fresh_database,
    old_log_migrated,
    run_audit_cli,
    sample_records,
    write_history,
)

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("retention.civicline.example/audit")
MAY = datetime(2026, 5, 12, 8, 0, tzinfo=UTC)
OLD, NEW = 20, 30  # events recorded in May (before 0050), and now


@pytest.fixture
async def log_url() -> AsyncIterator[str]:
    """20 events recorded in May, in the partition audit_log_legacy, then 30 recorded now,
    and a signed head over all 50."""
    async with old_log_migrated("retire", OLD, MAY, written_before=50) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            await append_batch(pool, sample_records(NEW))
            assert await sign_tree_head(pool, SIGNER) is not None
        finally:
            await pool.close()
        yield url


async def retire(url: str, partition: str, out: Path) -> retention.Retirement:
    return await retention.retire_month(
        url, partition, out, SIGNER.verifier, requested_by="records officer"
    )


async def signed_checkpoint(url: str) -> str:
    """A signed head over the whole log as it is now, as an auditor would save it."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        head = await sign_tree_head(pool, SIGNER, forced=True)
        if head is None:  # the log did not grow since the last head
            async with pool.acquire() as connection:
                head = await latest_tree_head(connection)
        assert head is not None
        return head.checkpoint
    finally:
        await pool.close()


async def test_a_retired_month_is_archived_proven_and_recorded(
    log_url: str, tmp_path: Path
) -> None:
    before = await signed_checkpoint(log_url)  # the head over 50, as an auditor saved it
    archive = tmp_path / "audit-2026-05.ndjson"
    done = await retire(log_url, "audit_log_legacy", archive)
    assert (done.first_seq, done.end_seq, done.seq) == (0, OLD, OLD + NEW)
    assert archive.exists()
    assert not archive.with_name(archive.name + ".partial").exists()

    # The archive holds the month's 20 events and verifies offline.
    report = verify_export(archive, SIGNER.verifier)
    assert report.ok, report.lines()
    assert (report.first_seq, report.events) == (0, OLD)

    connection = await asyncpg.connect(log_url)
    try:
        assert "audit_log_legacy" not in [m.partition for m in await retention.months(connection)]
        # Detached, not dropped: the owner archives the table and drops it.
        assert await connection.fetchval("SELECT count(*) FROM audit_log_legacy") == OLD
        for change in ("DELETE FROM audit_log_legacy", "TRUNCATE audit_log_legacy"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await connection.execute(change)
        assert await connection.fetchval("SELECT min(seq) FROM audit_log") == OLD
        recorded = await connection.fetchrow(
            "SELECT seq, payload::text AS payload FROM audit_log WHERE kind = 'audit.retention'"
        )
    finally:
        await connection.close()
    assert recorded["seq"] == OLD + NEW
    assert orjson.loads(recorded["payload"]) == {
        "partition": "audit_log_legacy",
        "first_seq": 0,
        "end_seq": OLD,
        "events": OLD,
        "recorded_from": None,  # the legacy partition runs from the start
        "recorded_until": "2026-05-12T08:00:19.000001+00:00",
        "retired": [[0, OLD]],
        "export_sha256": done.export_sha256,
        "requested_by": "records officer",
    }

    # The log that stays verifies, the retired month by its leaves...
    report = await verify_database(log_url, SIGNER.verifier, (before,))
    assert report.ok, report.lines()
    assert (report.events, report.retired) == (OLD + NEW + 1, OLD)
    # ...and so does a full export of it, offline.
    whole = tmp_path / "whole.ndjson"
    with whole.open("w") as out:
        assert await export_database(log_url, out) == OLD + NEW + 1
    report = verify_export(whole, SIGNER.verifier)
    assert report.ok, report.lines()

    # Seq 20's audit path needs the leaves of seqs 16 to 19, which were retired.
    after = await signed_checkpoint(log_url)
    proven = await check_inclusion(log_url, SIGNER.verifier, after, seq=OLD)
    assert proven.tree_size == OLD + NEW + 1
    await check_consistency(log_url, SIGNER.verifier, before, newer_note=after)


async def test_tampering_is_still_caught_after_a_month_is_retired(
    log_url: str, tmp_path: Path
) -> None:
    await retire(log_url, "audit_log_legacy", tmp_path / "may.ndjson")
    connection = await asyncpg.connect(log_url)
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(
                "ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuse_update_delete"
            )
            await connection.execute("DELETE FROM audit_log WHERE seq = 33")
            await connection.execute(
                "ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_update_delete"
            )
    finally:
        await connection.close()
    report = await verify_database(log_url, SIGNER.verifier)
    assert (report.findings[0].problem, report.findings[0].seq) == (Problem.REMOVED, 33)


async def test_a_month_detached_without_its_record_is_a_removal(log_url: str) -> None:
    connection = await asyncpg.connect(log_url)
    try:
        await connection.execute("ALTER TABLE audit_log DETACH PARTITION audit_log_legacy")
    finally:
        await connection.close()
    report = await verify_database(log_url, SIGNER.verifier)
    assert not report.ok
    assert (report.findings[0].problem, report.findings[0].seq) == (Problem.REMOVED, 0)


@pytest.mark.parametrize(
    ("partition", "reason"),
    [
        ("audit_log_2026_05", "holds no events"),  # the rest of May, after the old rows
        (f"audit_log_{datetime.now(UTC):%Y_%m}", "is not over yet"),
        ("audit_log_state", "is not a partition of audit_log"),
    ],
)
async def test_a_month_that_cannot_be_retired_stays(
    log_url: str, tmp_path: Path, partition: str, reason: str
) -> None:
    with pytest.raises(retention.RetentionError, match=reason):
        await retire(log_url, partition, tmp_path / "out.ndjson")
    report = await verify_database(log_url, SIGNER.verifier)
    assert report.ok, report.lines()
    assert report.retired == 0


async def test_a_month_no_signed_head_covers_yet_stays(tmp_path: Path) -> None:
    async with old_log_migrated("retire-unsigned", OLD, MAY, written_before=50) as url:
        with pytest.raises(retention.RetentionError, match="civicline-audit checkpoint"):
            await retire(url, "audit_log_legacy", tmp_path / "out.ndjson")
        assert not (tmp_path / "out.ndjson").exists()
        connection = await asyncpg.connect(url)
        try:
            assert await connection.fetchval("SELECT count(*) FROM audit_log") == OLD
        finally:
            await connection.close()


async def test_the_commands_list_months_and_retire_one(log_url: str, tmp_path: Path) -> None:
    env = {"CIVICLINE_DATABASE_URL": log_url}
    code, listed = await run_audit_cli("months", env=env)
    assert code == 0, listed
    lines = listed.splitlines()
    assert lines[0].split("\t") == ["partition", "from", "to", "events", "seqs", "MiB"]
    assert lines[1].split("\t")[:5] == [
        "audit_log_legacy",
        "start",
        "2026-05-12T08:00:19.000001+00:00",
        "20",
        "0-19",
    ]

    public_key = tmp_path / "audit.pub"
    public_key.write_text(SIGNER.verifier.encode() + "\n")
    archive = tmp_path / "may.ndjson"
    retire_args = (
        "retire",
        "--partition",
        "audit_log_legacy",
        "--out",
        str(archive),
        "--public-key",
        str(public_key),
        "--requested-by",
        "records officer",
    )
    code, output = await run_audit_cli(*retire_args, env=env)
    assert code == 0, output
    assert "retired audit_log_legacy: events 0 to 19" in output
    code, output = await run_audit_cli(*retire_args, env=env)
    assert code == 2
    assert "an archive is never overwritten" in output

    code, output = await run_audit_cli(
        "verify", "--public-key", str(public_key), "--export", str(archive), env=env
    )
    assert code == 0, output


async def test_a_month_whose_log_a_reader_holds_stays_and_leaves_no_archive(
    log_url: str, tmp_path: Path
) -> None:
    """An auditor's long export holds the log; detaching waits 10 s for it, then gives up
    and changes nothing, and the file written is not left to pass for an archive."""
    reader = await asyncpg.connect(log_url)
    try:
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            await reader.fetchval("SELECT count(*) FROM audit_log")
            with pytest.raises(retention.RetentionError, match="held it for 10s"):
                await retire(log_url, "audit_log_legacy", tmp_path / "may.ndjson")
    finally:
        await reader.close()
    assert not (tmp_path / "may.ndjson").exists()
    report = await verify_database(log_url, SIGNER.verifier)
    assert report.ok, report.lines()
    assert report.retired == 0


async def test_retiring_the_month_that_recorded_an_earlier_retirement_keeps_both(
    tmp_path: Path,
) -> None:
    """January was retired in March, so January's audit.retention event lives in March;
    when March is retired in turn, the new event still names January, and the log verifies."""
    january = datetime(2026, 1, 20, tzinfo=UTC)
    march = datetime(2026, 3, 3, tzinfo=UTC)
    async with fresh_database("retire-twice") as url:
        connection = await asyncpg.connect(url)
        try:
            jan_month = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
            retired_january = orjson.dumps(
                {
                    "partition": "audit_log_2026_01",
                    "first_seq": 0,
                    "end_seq": 10,
                    "events": 10,
                    "recorded_from": jan_month[0].isoformat(),
                    "recorded_until": jan_month[1].isoformat(),
                    "retired": [[0, 10]],
                    "export_sha256": "00" * 32,
                    "requested_by": "records officer",
                }
            ).decode()
            await write_history(
                connection,
                [(january.replace(minute=n), "message.voting", '{"n":1}') for n in range(10)]
                + [(march, "audit.retention", retired_january)]
                + [(march.replace(minute=n), "message.voting", '{"n":2}') for n in range(1, 10)],
            )
            await connection.execute("ALTER TABLE audit_log DETACH PARTITION audit_log_2026_01")
        finally:
            await connection.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        try:
            await append_batch(pool, sample_records(5))
            assert await sign_tree_head(pool, SIGNER) is not None
        finally:
            await pool.close()
        assert (await verify_database(url, SIGNER.verifier)).ok

        done = await retire(url, "audit_log_2026_03", tmp_path / "march.ndjson")
        assert (done.first_seq, done.end_seq) == (10, 20)
        connection = await asyncpg.connect(url)
        try:
            latest = await connection.fetchval(
                "SELECT payload::text FROM audit_log WHERE kind = 'audit.retention'"
            )
        finally:
            await connection.close()
        assert orjson.loads(latest)["retired"] == [[0, 10], [10, 20]]
        report = await verify_database(url, SIGNER.verifier)
        assert report.ok, report.lines()
        assert report.retired == 20
