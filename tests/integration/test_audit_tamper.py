"""A superuser tampers with the log (triggers disabled, as only a superuser or the owner can);
`civicline-audit verify` detects each change and names the sequence number where it happened.
Each test tampers with a log of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from civicline.audit.adapters import append_batch, sign_tree_head
from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer
from civicline.audit.verify import Problem, Report
from support.audit_logs import fresh_database, run_audit_cli, sample_records

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("tamper.civicline.example/audit")
HEAD_SIZES = (20, 40, 60)


async def build_log(url: str) -> list[str]:
    """60 events with signed heads at 20, 40 and 60; returns the heads' checkpoints."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    notes = []
    try:
        for _ in HEAD_SIZES:
            for _ in range(4):
                await append_batch(pool, sample_records(5))
            head = await sign_tree_head(pool, SIGNER)
            assert head is not None
            notes.append(head.checkpoint)
    finally:
        await pool.close()
    return notes


@pytest.fixture
async def log_url() -> AsyncIterator[str]:
    async with fresh_database("tamper") as url:
        yield url


async def as_superuser(url: str, *statements: str) -> None:
    """Run statements with every append-only trigger disabled, as an attacker with superuser
    rights would (ENABLE ALWAYS triggers still fire under session_replication_role=replica)."""
    connection = await asyncpg.connect(url)
    try:
        triggers = await connection.fetch(
            """SELECT tgrelid::regclass::text AS table_name, tgname FROM pg_trigger
               WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'audit%'"""
        )
        async with connection.transaction():
            for trigger in triggers:
                await connection.execute(
                    f"ALTER TABLE {trigger['table_name']} DISABLE TRIGGER {trigger['tgname']}"
                )
            for statement in statements:
                await connection.execute(statement)
            for trigger in triggers:
                await connection.execute(
                    f"ALTER TABLE {trigger['table_name']} ENABLE ALWAYS TRIGGER {trigger['tgname']}"
                )
    finally:
        await connection.close()


def pinpointed(report: Report) -> list[tuple[Problem, int]]:
    return [(f.problem, f.seq) for f in report.findings if f.problem is not Problem.ROOT_MISMATCH]


async def test_an_untouched_log_verifies(log_url: str) -> None:
    saved = await build_log(log_url)
    report = await verify_database(log_url, SIGNER.verifier, tuple(saved))
    assert report.ok, report.lines()
    assert report.verified_size == 60


async def test_an_edited_payload_is_pinpointed(log_url: str) -> None:
    await build_log(log_url)
    await as_superuser(
        log_url, """UPDATE audit_log SET payload = '{"text":"forged"}' WHERE seq = 27"""
    )
    report = await verify_database(log_url, SIGNER.verifier)
    assert pinpointed(report) == [(Problem.CHANGED, 27)]
    assert report.verified_size == 20
    assert not report.ok


async def test_an_edited_raw_body_is_pinpointed(log_url: str) -> None:
    await build_log(log_url)
    await as_superuser(log_url, "UPDATE audit_log SET raw_body = 'forged' WHERE seq = 33")
    report = await verify_database(log_url, SIGNER.verifier)
    assert pinpointed(report) == [(Problem.CHANGED, 33)]


async def test_a_deleted_row_is_pinpointed(log_url: str) -> None:
    await build_log(log_url)
    await as_superuser(log_url, "DELETE FROM audit_log WHERE seq = 12")
    report = await verify_database(log_url, SIGNER.verifier)
    assert pinpointed(report) == [(Problem.REMOVED, 12)]


async def test_swapped_rows_are_pinpointed(log_url: str) -> None:
    await build_log(log_url)
    await as_superuser(
        log_url,
        "UPDATE audit_log SET seq = 1000000 WHERE seq = 20",
        "UPDATE audit_log SET seq = 20 WHERE seq = 35",
        "UPDATE audit_log SET seq = 35 WHERE seq = 1000000",
    )
    report = await verify_database(log_url, SIGNER.verifier)
    assert pinpointed(report) == [(Problem.REORDERED, 20)]
    assert "seqs 20 and 35 were swapped" in str(report.findings[0])


async def test_a_forged_row_inserted_in_the_middle_is_pinpointed(log_url: str) -> None:
    await build_log(log_url)
    # A careful forger: renumbers the rows after the forgery, gives it a correct leaf hash
    # and moves the log state on.
    await as_superuser(
        log_url,
        "UPDATE audit_log SET seq = seq + 1000000 WHERE seq >= 22",
        "UPDATE audit_log SET seq = seq - 1000000 + 1 WHERE seq >= 1000000",
        """INSERT INTO audit_log (seq, event_id, kind, occurred_at, correlation_id,
                                  schema_version, payload, leaf_hash)
           VALUES (22, gen_random_uuid(), 'outbound.sent', now(), 'wamid.forged', 1,
                   '{"text":"forged reply"}', decode(repeat('00', 32), 'hex'))""",
        "UPDATE audit_log SET leaf_hash = audit_leaf_hash(audit_log) WHERE seq = 22",
        "UPDATE audit_log_state SET next_seq = next_seq + 1",
    )
    report = await verify_database(log_url, SIGNER.verifier)
    assert pinpointed(report) == [(Problem.INSERTED, 22)]


async def test_a_cut_tail_is_detected(log_url: str) -> None:
    await build_log(log_url)
    await as_superuser(log_url, "DELETE FROM audit_log WHERE seq >= 50")
    report = await verify_database(log_url, SIGNER.verifier)
    assert pinpointed(report)[0] == (Problem.TAIL_CUT, 50)
    assert report.verified_size == 40


async def test_a_tail_cut_with_its_heads_is_caught_by_a_saved_checkpoint(log_url: str) -> None:
    saved = await build_log(log_url)
    await as_superuser(
        log_url,
        "DELETE FROM audit_log WHERE seq >= 50",
        "DELETE FROM audit_tree_head WHERE tree_size > 50",
        "UPDATE audit_log_state SET next_seq = 50, tree_size = 50",
    )
    assert (await verify_database(log_url, SIGNER.verifier)).ok  # consistent with itself...
    report = await verify_database(log_url, SIGNER.verifier, (saved[-1],))
    assert pinpointed(report) == [(Problem.TAIL_CUT, 50)]  # ...not with the auditor
    assert "saved checkpoint #1" in str(report.findings[0])


async def run_cli(*arguments: str, database_url: str) -> tuple[int, str]:
    return await run_audit_cli(*arguments, env={"CIVICLINE_DATABASE_URL": database_url})


async def test_the_verify_command_exits_0_only_for_a_clean_log(
    log_url: str, tmp_path: Path
) -> None:
    saved = await build_log(log_url)
    public_key = tmp_path / "audit.pub"
    public_key.write_text(SIGNER.verifier.encode() + "\n")
    checkpoint = tmp_path / "saved.checkpoint"
    checkpoint.write_text(saved[0])
    arguments = ("verify", "--public-key", str(public_key), "--checkpoint", str(checkpoint))

    code, output = await run_cli(*arguments, database_url=log_url)
    assert code == 0, output
    assert output.splitlines()[-1].startswith("OK: 60 events")

    export = tmp_path / "log.ndjson"
    code, output = await run_cli("export", "--out", str(export), database_url=log_url)
    assert code == 0, output

    await as_superuser(log_url, "DELETE FROM audit_log WHERE seq = 7")
    code, output = await run_cli(*arguments, database_url=log_url)
    assert code == 1, output
    assert "REMOVED: seq 7 removed" in output

    # The export taken before the tampering still verifies offline, with the key alone.
    code, output = await run_cli(*arguments, "--export", str(export), database_url="")
    assert code == 0, output
