"""The responder's I/O: the reply ledger in Postgres (one row per answered inbound message, the
idempotency key) and the away notice, claimed once per conversation before it is sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import structlog

from civicline.common.amqp import Publisher, delivery_id
from civicline.common.batching import Batcher
from civicline.common.envelope import utc_now
from civicline.common.topology import OUTBOUND_FAILED, OUTBOUND_IN_DOUBT, OUTBOUND_SENT
from civicline.responder.core import SERVICE_WINDOW, Away, InboundRef, away_event
from civicline.responder.graph import GraphError, SendResult
from civicline.responder.throttle import Slot

log = structlog.get_logger(__name__)


class MessageSender(Protocol):
    """What sends a Graph API message within the number's throughput limit."""

    def paused(self, phone_number_id: str) -> bool:
        """Meta refuses every send of the number for now: a send would be refused unsent."""

    async def wait_for_slot(self, phone_number_id: str) -> Slot:
        """Wait for the number's next send slot."""

    async def send_now(
        self, phone_number_id: str, message: Mapping[str, Any], slot: Slot
    ) -> SendResult:
        """Send in the slot `wait_for_slot` gave."""

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        """Both: wait for a slot, then send."""


# How long a 'sending' claim may belong to a live responder: longer than a Graph API call
# (its timeout) plus the ledger write after it. A redelivered message finding a younger claim
# waits for its outcome (another handler, whose channel died, is still at work); an older
# claim was left by a responder that died mid-send, so the reply is in doubt.
REPLY_LEASE_SECONDS = 30


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    state: str
    wamid: str | None
    error_code: int | None
    claim_is_live: bool = False


class ClaimLost(Exception):
    """Our reply claim lapsed (Postgres was out of reach longer than its lease) or is another
    delivery's now: a redelivery may have found it and reported the reply in doubt, so it must
    not be sent from here."""


@dataclass(slots=True)
class ClaimHold:
    """A claim being held live (ReplyLedger.held)."""

    renewed_at: float  # the event loop's time of the claim or its last renewal
    lost: bool = False

    def check(self) -> None:
        """Raise ClaimLost unless the claim is certainly still ours and live."""
        age = asyncio.get_running_loop().time() - self.renewed_at
        if self.lost or age >= REPLY_LEASE_SECONDS * 0.8:
            raise ClaimLost("the reply's claim lapsed or is another delivery's")


@dataclass(frozen=True, slots=True)
class Claim:
    inbound: InboundRef
    state: str
    delivery: str  # the consumer's delivery id, to recognise our own claim on a retry


def claim_outcome(row: Mapping[str, Any], delivery: str) -> LedgerEntry | None:
    """None if this claim owns the reply now, else the ledger row that was already there."""
    if row["inserted"]:
        return None
    if row["state"] == "sending" and row["claimed_by"] and row["claimed_by"] == delivery:
        return None  # our own claim, whose INSERT committed though its answer was lost
    return LedgerEntry(row["state"], row["wamid"], row["error_code"], row["claim_is_live"])


# A second claim of one message within a batch (its turn should make that impossible): it
# waits, as for any live claim, and retries after the first one's outcome is recorded.
CLAIMED_IN_THIS_BATCH = LedgerEntry("sending", None, None, claim_is_live=True)

_CLAIM = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
            AS i(inbound_message_id, phone_number_id, recipient, state, claimed_by)),
    inserted AS (
        INSERT INTO reply_ledger
            (inbound_message_id, phone_number_id, recipient, state, claimed_by)
        SELECT * FROM input ON CONFLICT DO NOTHING RETURNING inbound_message_id)
    SELECT i.inbound_message_id, ins.inbound_message_id IS NOT NULL AS inserted,
           l.state, l.wamid, l.error_code, l.claimed_by,
           l.updated_at > now() - make_interval(secs => $6) AS claim_is_live
    FROM input i
    LEFT JOIN inserted ins USING (inbound_message_id)
    LEFT JOIN reply_ledger l ON l.inbound_message_id = i.inbound_message_id"""

# Rows another transaction committed while ours ran are not in our statement's snapshot:
# read them again, in a new one.
_READ = """
    SELECT inbound_message_id, false AS inserted, state, wamid, error_code, claimed_by,
           updated_at > now() - make_interval(secs => $2) AS claim_is_live
    FROM reply_ledger WHERE inbound_message_id = ANY($1::text[])"""

_SETTLE = """
    UPDATE reply_ledger AS l
    SET state = u.state, wamid = u.wamid, error_code = u.error_code, updated_at = now()
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])
        AS u(inbound_message_id, state, wamid, error_code)
    WHERE l.inbound_message_id = u.inbound_message_id"""


@dataclass(frozen=True, slots=True)
class Settlement:
    wamid: str
    state: str
    sent_wamid: str | None
    error_code: int | None


class ReplyLedger:
    """The reply ledger, written by concurrent handlers through two batchers: the claims
    pending at one moment share one statement, and so do the settlements (a group commit;
    a lone claim goes at once). Each handler still gets its own answer."""

    def __init__(self, pool: asyncpg.Pool, *, batch_size: int = 64) -> None:
        self._pool = pool
        self._claims: Batcher[Claim, LedgerEntry | None] = Batcher(
            self._claim_batch, size=batch_size, linger=0, name="reply-claims"
        )
        self._settlements: Batcher[Settlement, None] = Batcher(
            self._settle_batch, size=batch_size, linger=0, name="reply-settlements"
        )

    def start(self) -> None:
        self._claims.start()
        self._settlements.start()

    @property
    def batchers(self) -> tuple[Batcher[Any, Any], ...]:
        return self._claims, self._settlements

    async def close(self) -> None:
        await self._claims.close()
        await self._settlements.close()

    async def claim(self, inbound: InboundRef, state: str) -> LedgerEntry | None:
        """Write the ledger row; None if we own the reply now, else the row already there."""
        return await self._claims.submit(Claim(inbound, state, delivery_id.get()))

    async def settle(
        self, wamid: str, *, state: str, sent_wamid: str | None, error_code: int | None
    ) -> None:
        await self._settlements.submit(Settlement(wamid, state, sent_wamid, error_code))

    async def release(self, wamid: str) -> None:
        await release_reply(self._pool, wamid)

    @contextlib.asynccontextmanager
    async def held(self, wamid: str) -> AsyncIterator[ClaimHold]:
        """While the block runs, our claim on `wamid` stays live: it is renewed every third of
        REPLY_LEASE_SECONDS. A redelivery meanwhile (our channel died, not our process) waits
        for this holder's outcome, however long its send waits for a slot; if the process
        dies, the renewals stop with it and the claim lapses as before.

        Only a claim still ours and still live is renewed: one that lapsed while Postgres was
        out of reach may have been found by a redelivery and reported in doubt, and must not
        be brought back. The block asks `hold.check()` before it calls Meta."""
        hold = ClaimHold(asyncio.get_running_loop().time())
        delivery = delivery_id.get() or None

        async def renew() -> None:
            while True:
                await asyncio.sleep(REPLY_LEASE_SECONDS / 3)
                try:
                    renewed = await self._pool.fetchval(
                        """UPDATE reply_ledger SET updated_at = now()
                           WHERE inbound_message_id = $1 AND state = 'sending'
                             AND claimed_by IS NOT DISTINCT FROM $2
                             AND updated_at > now() - make_interval(secs => $3)
                           RETURNING true""",
                        wamid,
                        delivery,
                        float(REPLY_LEASE_SECONDS),
                    )
                except Exception as exc:  # an outage: the claim may lapse, nothing else
                    log.warning("reply_claim_not_renewed", error=f"{type(exc).__name__}: {exc}")
                    continue
                if not renewed:
                    hold.lost = True
                    return
                hold.renewed_at = asyncio.get_running_loop().time()

        renewing = asyncio.create_task(renew(), name=f"renew-claim-{wamid}")
        try:
            yield hold
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _claim_batch(self, claims: Sequence[Claim]) -> list[LedgerEntry | None]:
        first: dict[str, Claim] = {}
        for claim in claims:
            first.setdefault(claim.inbound.wamid, claim)
        unique = list(first.values())
        lease = float(REPLY_LEASE_SECONDS)
        rows = {
            row["inbound_message_id"]: row
            for row in await self._pool.fetch(
                _CLAIM,
                [c.inbound.wamid for c in unique],
                [c.inbound.phone_number_id for c in unique],
                [c.inbound.recipient for c in unique],
                [c.state for c in unique],
                [c.delivery or None for c in unique],
                lease,
            )
        }
        unseen = [key for key, row in rows.items() if not row["inserted"] and row["state"] is None]
        if unseen:
            rows |= {
                row["inbound_message_id"]: row
                for row in await self._pool.fetch(_READ, unseen, lease)
            }
        return [
            claim_outcome(rows[claim.inbound.wamid], claim.delivery)
            if first[claim.inbound.wamid] is claim
            else CLAIMED_IN_THIS_BATCH
            for claim in claims
        ]

    async def _settle_batch(self, settlements: Sequence[Settlement]) -> list[None]:
        await self._pool.execute(
            _SETTLE,
            [s.wamid for s in settlements],
            [s.state for s in settlements],
            [s.sent_wamid for s in settlements],
            [s.error_code for s in settlements],
        )
        return [None] * len(settlements)


async def release_reply(pool: asyncpg.Pool, wamid: str) -> None:
    """Meta answered with a retryable error, so nothing was sent: let a retry claim it again."""
    await pool.execute(
        "DELETE FROM reply_ledger WHERE inbound_message_id = $1 AND state = 'sending'", wamid
    )


# --- the away notice --------------------------------------------------------------------------


async def claim_away_notice(pool: asyncpg.Pool, inbound: InboundRef, now: datetime) -> bool:
    """Claim this conversation's away notice for `inbound`; False if one went out in the last
    24 h, or if the reply to `inbound` was not sent (the notice only ever follows an answer).

    One statement, so two replicas answering the same citizen cannot both claim it.
    """
    claimed = await pool.fetchval(
        """INSERT INTO away_notices
               (phone_number_id, citizen, inbound_message_id, state, claimed_at)
           SELECT $1, $2, $3, 'sending', $4
            WHERE EXISTS (SELECT 1 FROM reply_ledger
                           WHERE inbound_message_id = $3 AND state = 'sent')
           ON CONFLICT (phone_number_id, citizen) DO UPDATE
              SET inbound_message_id = EXCLUDED.inbound_message_id, state = 'sending',
                  wamid = NULL, claimed_at = EXCLUDED.claimed_at, updated_at = now()
            WHERE away_notices.claimed_at <= EXCLUDED.claimed_at - $5::interval
           RETURNING true""",
        inbound.phone_number_id,
        inbound.recipient,
        inbound.wamid,
        now,
        SERVICE_WINDOW,
    )
    return bool(claimed)


async def settle_away_notice(pool: asyncpg.Pool, inbound: InboundRef, wamid: str) -> None:
    await pool.execute(
        """UPDATE away_notices SET state = 'sent', wamid = $4, updated_at = now()
           WHERE phone_number_id = $1 AND citizen = $2 AND inbound_message_id = $3""",
        inbound.phone_number_id,
        inbound.recipient,
        inbound.wamid,
        wamid,
    )


async def release_away_notice(pool: asyncpg.Pool, inbound: InboundRef) -> None:
    """The notice was not delivered to Meta: the citizen's next message may try again."""
    await pool.execute(
        """DELETE FROM away_notices WHERE phone_number_id = $1 AND citizen = $2
               AND inbound_message_id = $3 AND state = 'sending'""",
        inbound.phone_number_id,
        inbound.recipient,
        inbound.wamid,
    )


async def send_away_notice(
    pool: asyncpg.Pool,
    publisher: Publisher,
    sender: MessageSender,
    inbound: InboundRef,
    away: Away,
) -> None:
    """Send the away notice once per conversation, after the reply, and record the outcome.

    Best effort: a failure is recorded (`outbound.failed`, purpose "away") and never retried
    by redelivering the citizen's message, whose reply has already gone out.
    """
    now = utc_now()
    if not await claim_away_notice(pool, inbound, now):
        return
    try:
        result = await sender.send(inbound.phone_number_id, away.message)
    except GraphError as exc:
        if exc.ambiguous:
            # Meta may have it: keep the claim, so the conversation never gets a second one.
            event = away_event(OUTBOUND_IN_DOUBT, inbound, away, now, {"reason": "timeout"})
        else:
            await release_away_notice(pool, inbound)
            event = away_event(OUTBOUND_FAILED, inbound, away, now, {"error": exc.as_payload()})
        await publisher.publish_envelope(event)
        log.warning("away_notice_failed", error=str(exc))
        return
    await settle_away_notice(pool, inbound, result.wamid)
    await publisher.publish_envelope(
        away_event(OUTBOUND_SENT, inbound, away, now, {"wamid": result.wamid})
    )
    log.info("away_notice_sent", language=away.reply.language, wamid=result.wamid)
