"""The roles migration 0005 creates: the services' writer may only append to the audit tables
(and keep router and responder state), the auditor may only read them, and UPDATE, DELETE and
TRUNCATE are refused to the writer by privileges before any trigger runs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from civicline.audit.adapters import append_batch, sign_tree_head
from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer
from support.audit_logs import database_url_as, fresh_database, sample_records

pytestmark = pytest.mark.integration

WRITER, AUDITOR = "civicline_writer", "civicline_auditor"
SIGNER = Signer.generate("roles.civicline.example/audit")


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    """A database of the module's own; these tests need no broker (so no vhost)."""
    async with fresh_database("roles") as url:
        yield url


@pytest.fixture(scope="module")
async def writer_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url_as(database_url, WRITER), min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="module")
async def written(writer_pool: asyncpg.Pool) -> int:
    """The writer does everything the audit service does: append, fold subtrees, sign."""
    for _ in range(4):
        assert await append_batch(writer_pool, sample_records(10)) == 10
    head = await sign_tree_head(writer_pool, SIGNER)
    assert head is not None
    return head.tree_size


async def test_the_writer_appends_and_signs(writer_pool: asyncpg.Pool, written: int) -> None:
    assert written == 40
    assert await writer_pool.fetchval("SELECT current_user") == WRITER
    assert await writer_pool.fetchval("SELECT count(*) FROM audit_subtree") == 2


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET kind = 'message.tampered' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
        "TRUNCATE audit_log",
        "UPDATE audit_subtree SET hash = hash",
        "DELETE FROM audit_subtree",
        "TRUNCATE audit_subtree",
        "UPDATE audit_tree_head SET checkpoint = ''",
        "DELETE FROM audit_tree_head",
        "TRUNCATE audit_tree_head",
        "DELETE FROM audit_log_state",
        "TRUNCATE audit_log_state",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TABLE audit_log",
    ],
)
async def test_the_writer_cannot_change_or_remove_what_is_logged(
    writer_pool: asyncpg.Pool, written: int, statement: str
) -> None:
    before = await writer_pool.fetchval("SELECT count(*) FROM audit_log")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await writer_pool.execute(statement)
    assert await writer_pool.fetchval("SELECT count(*) FROM audit_log") == before


async def test_the_log_state_only_moves_forward_even_for_the_writer(
    writer_pool: asyncpg.Pool, written: int
) -> None:
    # The writer must UPDATE the log-state row to number batches; the trigger keeps it from
    # moving back (which would make the next batch overwrite numbers or hide a tail).
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="forward"):
        await writer_pool.execute("UPDATE audit_log_state SET next_seq = next_seq - 1")


async def test_a_revoked_api_token_stays_revoked_whoever_asks(
    writer_pool: asyncpg.Pool, database_url: str
) -> None:
    # The writer (every service's role) may revoke a token; a stolen service credential must
    # not bring a revoked auditor's token back. Nor may the owner: revoking is for good.
    owner = await asyncpg.connect(database_url)
    try:
        await owner.execute(
            """INSERT INTO audit_api_token (token_id, name, role, token_hash)
               VALUES (gen_random_uuid(), 'revoked-auditor', 'auditor', sha256('t'::bytea))"""
        )
        revoke = "UPDATE audit_api_token SET revoked_at = now() WHERE name = 'revoked-auditor'"
        await writer_pool.execute(revoke)
        for connection in (writer_pool, owner):
            for statement in (
                "UPDATE audit_api_token SET revoked_at = NULL WHERE name = 'revoked-auditor'",
                revoke,  # moving the time of a revocation
                "DELETE FROM audit_api_token WHERE name = 'revoked-auditor'",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute(statement)
        assert await owner.fetchval(
            "SELECT revoked_at IS NOT NULL FROM audit_api_token WHERE name = 'revoked-auditor'"
        )
    finally:
        await owner.close()


async def test_only_the_owner_issues_api_tokens(
    writer_pool: asyncpg.Pool, database_url: str
) -> None:
    # A stolen service credential must not mint itself an auditor's token.
    mint = """INSERT INTO audit_api_token (token_id, name, role, token_hash)
              VALUES (gen_random_uuid(), $1::text, 'auditor', sha256(convert_to($1, 'UTF8')))"""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await writer_pool.execute(mint, "minted-by-a-service")
    owner = await asyncpg.connect(database_url)
    try:
        await owner.execute(mint, "issued-by-the-owner")
        names = await owner.fetch("SELECT name FROM audit_api_token WHERE name LIKE '%-by-%'")
    finally:
        await owner.close()
    assert [row["name"] for row in names] == ["issued-by-the-owner"]
    # The services still read tokens: they check every bearer token against them.
    assert await writer_pool.fetchval(
        "SELECT count(*) FROM audit_api_token WHERE name = 'issued-by-the-owner'"
    )


async def test_the_writer_keeps_router_and_responder_state(writer_pool: asyncpg.Pool) -> None:
    async with writer_pool.acquire() as connection, connection.transaction():
        await connection.execute("INSERT INTO router_seen (dedup_key) VALUES ('message:w1')")
        await connection.execute(
            "UPDATE router_seen SET first_seen_at = now() WHERE dedup_key = 'message:w1'"
        )
        await connection.execute("DELETE FROM router_seen WHERE dedup_key = 'message:w1'")
        await connection.execute(
            """INSERT INTO contacts (phone_number_id, citizen, language) VALUES ('p', 'c', 'ko')
               ON CONFLICT (phone_number_id, citizen) DO UPDATE SET language = 'ja'"""
        )
        await connection.execute(
            """INSERT INTO reply_ledger (inbound_message_id, phone_number_id, recipient, state)
               VALUES ('wamid.1', 'p', 'c', 'sending')"""
        )
        await connection.execute(
            "UPDATE reply_ledger SET state = 'sent' WHERE inbound_message_id = 'wamid.1'"
        )


async def test_the_auditor_reads_and_verifies_but_writes_nothing(
    database_url: str, written: int
) -> None:
    url = database_url_as(database_url, AUDITOR)
    report = await verify_database(url, SIGNER.verifier)
    assert report.ok, report.lines()
    connection = await asyncpg.connect(url)
    try:
        for statement in (
            "INSERT INTO audit_tree_head VALUES (1000, '\\x00', now(), '')",
            "UPDATE audit_log_state SET next_seq = next_seq + 1",
            "SELECT * FROM router_seen",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
    finally:
        await connection.close()
