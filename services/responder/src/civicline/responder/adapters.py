"""The reply ledger in Postgres: one row per answered inbound message (the idempotency key)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from civicline.responder.core import InboundRef


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    state: str
    wamid: str | None
    error_code: int | None


async def claim_reply(pool: asyncpg.Pool, inbound: InboundRef, state: str) -> LedgerEntry | None:
    """Write the ledger row; None if we own the reply now, else the row that was already there."""
    async with pool.acquire() as connection:
        inserted = await connection.fetchval(
            """INSERT INTO reply_ledger (inbound_message_id, phone_number_id, recipient, state)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
            inbound.wamid,
            inbound.phone_number_id,
            inbound.recipient,
            state,
        )
        if inserted:
            return None
        row = await connection.fetchrow(
            "SELECT state, wamid, error_code FROM reply_ledger WHERE inbound_message_id = $1",
            inbound.wamid,
        )
    assert row is not None
    return LedgerEntry(row["state"], row["wamid"], row["error_code"])


async def settle_reply(
    pool: asyncpg.Pool, wamid: str, *, state: str, sent_wamid: str | None, error_code: int | None
) -> None:
    await pool.execute(
        """UPDATE reply_ledger SET state = $2, wamid = $3, error_code = $4, updated_at = now()
           WHERE inbound_message_id = $1""",
        wamid,
        state,
        sent_wamid,
        error_code,
    )


async def release_reply(pool: asyncpg.Pool, wamid: str) -> None:
    """Meta answered with a retryable error, so nothing was sent: let a retry claim it again."""
    await pool.execute(
        "DELETE FROM reply_ledger WHERE inbound_message_id = $1 AND state = 'sending'", wamid
    )
