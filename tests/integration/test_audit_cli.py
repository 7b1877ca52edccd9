"""`civicline-audit checkpoint`, `inclusion` and `consistency` as an operator and an auditor run
them: processes, exit statuses, files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncpg
import pytest

from civicline.audit.adapters import append_batch
from civicline.audit.checkpoint import Signer, open_checkpoint
from support.audit_logs import database_url_as, fresh_database, run_audit_cli, sample_records

pytestmark = pytest.mark.integration

SIGNER = Signer.generate("cli.civicline.example/audit")


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    async with fresh_database("cli") as url:
        yield url


async def append(url: str, count: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        await append_batch(pool, sample_records(count))
    finally:
        await pool.close()


async def test_checkpoint_inclusion_and_consistency_commands(
    database_url: str, tmp_path: Path
) -> None:
    key, public_key = tmp_path / "audit.key", tmp_path / "audit.key.pub"
    key.write_text(SIGNER.encode() + "\n")
    public_key.write_text(SIGNER.verifier.encode() + "\n")
    directory = tmp_path / "heads"
    env = {
        "CIVICLINE_DATABASE_URL": database_url,
        "AUDIT_SIGNING_KEY_FILE": str(key),
        "AUDIT_CHECKPOINT_DIR": str(directory),
    }

    code, output = await run_audit_cli("checkpoint", "--no-publish", env=env)
    assert code == 0, output
    assert "the log is empty" in output

    await append(database_url, 30)
    first = tmp_path / "first.checkpoint"
    code, output = await run_audit_cli("checkpoint", "--no-publish", "--out", str(first), env=env)
    assert code == 0, output
    assert open_checkpoint(first.read_text(), SIGNER.verifier).tree_size == 30
    assert (directory / "latest.checkpoint").read_text() == first.read_text()

    # Nothing new: the latest head again, not a second head for the same size.
    code, output = await run_audit_cli("checkpoint", "--no-publish", env=env)
    assert code == 0, output
    assert "has not grown since the head of size 30" in output

    await append(database_url, 20)
    code, output = await run_audit_cli("checkpoint", "--no-publish", env=env)
    assert code == 0, output

    auditor = {"CIVICLINE_DATABASE_URL": database_url}
    keyed = ("--public-key", str(public_key))
    code, output = await run_audit_cli(
        "inclusion", *keyed, "--checkpoint", str(first), "--seq", "29", env=auditor
    )
    assert code == 0, output
    assert "(seq 29) is included" in output
    code, output = await run_audit_cli(
        "inclusion", *keyed, "--checkpoint", str(first), "--seq", "30", env=auditor
    )
    assert code == 1, output
    code, output = await run_audit_cli(
        "consistency", *keyed, "--checkpoint", str(first), env=auditor
    )
    assert code == 0, output
    assert "the log of 50 events extends the saved one of 30 events" in output


async def test_checkpoint_without_a_key_is_a_usage_error(database_url: str) -> None:
    code, output = await run_audit_cli(
        "checkpoint", env={"CIVICLINE_DATABASE_URL": database_url, "AUDIT_SIGNING_KEY": ""}
    )
    assert code == 2
    assert "no signing key" in output


async def test_verify_with_a_malformed_key_is_a_usage_error() -> None:
    code, output = await run_audit_cli("verify", "--public-key", "not-a-key", env={})
    assert code == 2
    assert "--public-key" in output


async def test_a_token_is_issued_with_the_owners_url_not_a_services(database_url: str) -> None:
    def issue(url: str) -> Awaitable[tuple[int, str]]:
        return run_audit_cli(
            "token", "create", "--name", "court-auditor", "--role", "auditor",
            "--database-url", url, env={},
        )  # fmt: skip

    code, output = await issue(database_url_as(database_url, "civicline_writer"))
    assert code == 2
    assert "owner's database URL" in output
    assert "cvl_" not in output  # no token was printed, none exists
    code, output = await issue(database_url)
    assert code == 0
    assert "cvl_" in output
