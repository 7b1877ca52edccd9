"""The reply ledger on the real Postgres, written in batches by concurrent handlers: each
claim still gets its own answer, exactly as when every claim was its own statement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from civicline.common.amqp import delivery_id
from civicline.responder.adapters import LedgerEntry, ReplyLedger, claim_outcome
from civicline.responder.core import InboundRef
from support.isolation import Environment, EnvironmentFactory

pytestmark = pytest.mark.integration

NUMBER = "106512349876543"


def inbound(n: int) -> InboundRef:
    return InboundRef(
        wamid=f"wamid.L{n}",
        phone_number_id=NUMBER,
        recipient=f"8210{n:08d}",
        intent="voting_location",
        language="ko",
        needs_reply=True,
        opted_out=False,
    )


@pytest.fixture(scope="module")
async def environment(environments: EnvironmentFactory) -> Environment:
    return await environments("ledger")


@pytest.fixture
async def pool(environment: Environment) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=4)
    await pool.execute("DELETE FROM reply_ledger")
    yield pool
    await pool.close()


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> AsyncIterator[ReplyLedger]:
    ledger = ReplyLedger(pool, batch_size=16)
    ledger.start()
    yield ledger
    await ledger.close()


async def claim_as(ledger: ReplyLedger, message: InboundRef, delivery: str) -> LedgerEntry | None:
    delivery_id.set(delivery)  # each task has its own context, as each delivery does
    return await ledger.claim(message, "sending")


async def test_concurrent_claims_each_own_their_reply_once(
    ledger: ReplyLedger, pool: asyncpg.Pool
) -> None:
    messages = [inbound(n) for n in range(40)]
    first = await asyncio.gather(*(claim_as(ledger, m, f"d{i}") for i, m in enumerate(messages)))
    assert first == [None] * 40  # every handler owns its reply
    again = await asyncio.gather(*(claim_as(ledger, m, f"e{i}") for i, m in enumerate(messages)))
    # A redelivery (another delivery id) finds the live claim and must wait, not send.
    assert all(entry is not None and entry.state == "sending" for entry in again)
    assert all(entry is not None and entry.claim_is_live for entry in again)
    assert await pool.fetchval("SELECT count(*) FROM reply_ledger") == 40


async def test_settlements_are_recorded_and_replayed(
    ledger: ReplyLedger, pool: asyncpg.Pool
) -> None:
    messages = [inbound(n) for n in range(10)]
    await asyncio.gather(*(claim_as(ledger, m, f"d{i}") for i, m in enumerate(messages)))
    await asyncio.gather(
        *(
            ledger.settle(m.wamid, state="sent", sent_wamid=f"wamid.OUT{i}", error_code=None)
            for i, m in enumerate(messages[:5])
        ),
        *(
            ledger.settle(m.wamid, state="failed", sent_wamid=None, error_code=131026)
            for m in messages[5:]
        ),
    )
    replays = await asyncio.gather(*(claim_as(ledger, m, "later") for m in messages))
    assert [(e.state, e.wamid) for e in replays if e is not None][:5] == [
        ("sent", f"wamid.OUT{i}") for i in range(5)
    ]
    assert [(e.state, e.error_code) for e in replays if e is not None][5:] == [
        ("failed", 131026)
    ] * 5


async def test_the_same_delivery_recognises_its_own_claim(ledger: ReplyLedger) -> None:
    message = inbound(1)
    assert await claim_as(ledger, message, "d1") is None
    # Its INSERT committed but the answer was lost; the same delivery retries.
    assert await claim_as(ledger, message, "d1") is None


async def test_the_same_message_twice_in_one_batch_is_owned_once(ledger: ReplyLedger) -> None:
    message = inbound(2)
    outcomes = await asyncio.gather(claim_as(ledger, message, "a"), claim_as(ledger, message, "b"))
    assert outcomes.count(None) == 1


async def test_a_claim_racing_another_replicas_commit_reads_its_row(
    ledger: ReplyLedger, pool: asyncpg.Pool
) -> None:
    message = inbound(3)
    async with pool.acquire() as other:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(
            "INSERT INTO reply_ledger (inbound_message_id, phone_number_id, recipient, state,"
            " wamid) VALUES ($1, $2, $3, 'sent', 'wamid.THEIRS')",
            message.wamid,
            message.phone_number_id,
            message.recipient,
        )
        claim = asyncio.create_task(claim_as(ledger, message, "mine"))
        await asyncio.sleep(0.3)  # our INSERT now waits on their uncommitted row
        assert not claim.done()
        await transaction.commit()
        entry = await claim
    # Their row was committed after our statement's snapshot: it is read again, not missed.
    assert entry is not None
    assert (entry.state, entry.wamid) == ("sent", "wamid.THEIRS")


def test_claim_outcome() -> None:
    row = {
        "inserted": False,
        "state": "sending",
        "wamid": None,
        "error_code": None,
        "claimed_by": "d1",
        "claim_is_live": True,
    }
    assert claim_outcome(row | {"inserted": True}, "d1") is None
    assert claim_outcome(row, "d1") is None
    other = claim_outcome(row, "d2")
    assert other is not None
    assert other.claim_is_live
