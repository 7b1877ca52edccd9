"""responder's message handler: one reply per inbound message, recorded before it is sent."""

from __future__ import annotations

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter

from civicline.common.amqp import MessageHandler, PoisonMessage, Publisher, retry_attempt
from civicline.common.envelope import Envelope, EnvelopeError, utc_now
from civicline.common.failures import DependencyUnavailable, outlast_outage
from civicline.common.ordering import CitizenTurns
from civicline.common.topics import Topics
from civicline.common.topology import RESPONDER_MESSAGES
from civicline.responder import adapters
from civicline.responder.adapters import MessageSender
from civicline.responder.catalog import Catalog
from civicline.responder.core import (
    InboundRef,
    NoReply,
    Send,
    Suppress,
    decide,
    failed_event,
    in_doubt_event,
    sent_event,
    suppressed_event,
    window_closed_fallback,
)
from civicline.responder.graph import GraphError, SenderPaused, SendResult
from civicline.responder.throttle import Slot

log = structlog.get_logger(__name__)

# Meta's re-engagement error: the 24-hour window had closed (reference §6).
WINDOW_CLOSED = 131047
REPLIES = Counter("civicline_responder_replies_total", "Reply outcomes", ["outcome"])


class ReplyInProgress(DependencyUnavailable):
    """Another handler holds a live claim on this reply; the consumer retries in place."""


def responder_handler(
    pool: asyncpg.Pool,
    ledger: adapters.ReplyLedger,
    publisher: Publisher,
    graph: MessageSender,
    catalog: Catalog,
    *,
    max_retries: int,
    topics: Topics | None = None,
) -> MessageHandler:
    citizens = CitizenTurns()

    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            inbound = InboundRef.from_payload(Envelope.decode(message.body).payload)
        except (EnvelopeError, KeyError, TypeError) as exc:
            raise PoisonMessage(f"not a classified message: {exc!r}") from None
        async with citizens.turn(inbound.recipient):
            await answer(message, inbound)

    async def answer(message: AbstractIncomingMessage, inbound: InboundRef) -> None:
        decision = decide(inbound, catalog, topics=topics)
        if isinstance(decision, NoReply):
            return
        state = "suppressed" if isinstance(decision, Suppress) else "sending"
        if isinstance(decision, Send) and graph.paused(inbound.phone_number_id):
            # Meta refuses this sender until people fix it and no probe is due: wait, as in
            # an outage, without taking a slot or writing a claim.
            REPLIES.labels("paused").inc()
            raise SenderPaused(f"sender {inbound.phone_number_id} is paused")
        # The slot first, then the claim: a claim then lasts only as long as the Graph API
        # call, so a responder killed while its sends wait for slots (up to a prefetch of
        # them, at a low limit) leaves them unclaimed, answered after redelivery, instead of
        # claimed and reported in doubt.
        slot = (
            await graph.wait_for_slot(inbound.phone_number_id)
            if isinstance(decision, Send)
            else None
        )
        existing = await ledger.claim(inbound, state)
        if existing is not None and existing.state == "sending" and existing.claim_is_live:
            # Redelivered while the handler that claimed it may still be at work (its channel
            # died, not its process): wait for that outcome rather than call it in doubt.
            raise ReplyInProgress(inbound.wamid)
        if existing is not None:
            await _replay(publisher, inbound, decision, existing)
            return
        if isinstance(decision, Suppress):
            await publisher.publish_envelope(suppressed_event(inbound, decision.reason, utc_now()))
            REPLIES.labels("suppressed").inc()
            return
        assert slot is not None  # taken above for every Send
        try:
            async with ledger.held(inbound.wamid) as hold:
                decision, result = await send_reply(inbound, decision, slot, hold)
        except _Refused as refused:
            await _not_sent(
                ledger, publisher, message, inbound, refused.send, refused.error, max_retries
            )
            return
        except adapters.ClaimLost:
            # Our claim lapsed while the send waited (Postgres out of reach past its lease):
            # a redelivery may have found it and reported the reply in doubt. Say the same,
            # and never send it from here.
            await _report_in_doubt(publisher, inbound, "reply_claim_lost")
            return
        # Meta has the message: from here on only an outage may delay the record, never
        # make us forget that it was sent (a redelivery would then call it in doubt).
        await outlast_outage(
            lambda: ledger.settle(
                inbound.wamid, state="sent", sent_wamid=result.wamid, error_code=None
            ),
            what="reply ledger",
        )
        await publisher.publish_envelope(sent_event(inbound, decision, result.wamid, utc_now()))
        REPLIES.labels("sent").inc()
        log.info(
            "reply_sent",
            intent=inbound.intent,
            language=decision.reply.language,
            wamid=result.wamid,
        )
        if decision.away is not None:  # outside office hours: once per conversation
            await adapters.send_away_notice(pool, publisher, graph, inbound, decision.away)

    async def send_reply(
        inbound: InboundRef, send: Send, slot: Slot, hold: adapters.ClaimHold
    ) -> tuple[Send, SendResult]:
        """Send `send` in `slot`, under the claim `hold` keeps: what went, and Meta's answer."""
        number = inbound.phone_number_id
        try:
            return send, await graph.send_now(number, send.message, slot)
        except GraphError as exc:
            fallback = (
                window_closed_fallback(inbound, send, catalog)
                if exc.code == WINDOW_CLOSED
                else None
            )
            if fallback is None:
                raise _Refused(send, exc) from None
        # Refused outright, so nothing went: the template goes under the same claim, in a slot
        # of its own. The claim is held live meanwhile (`ledger.held`): under a heavy slowdown
        # the wait could outlast its lease, and a redelivery would then report the reply in
        # doubt though it had not gone.
        slot = await graph.wait_for_slot(number)
        hold.check()
        try:
            return fallback, await graph.send_now(number, fallback.message, slot)
        except GraphError as exc:
            raise _Refused(fallback, exc) from None

    return handle


class _Refused(Exception):
    """Meta did not take `send`."""

    def __init__(self, send: Send, error: GraphError) -> None:
        super().__init__(str(error))
        self.send = send
        self.error = error


async def _not_sent(
    ledger: adapters.ReplyLedger,
    publisher: Publisher,
    message: AbstractIncomingMessage,
    inbound: InboundRef,
    send: Send,
    exc: GraphError,
    max_retries: int,
) -> None:
    if exc.ambiguous:
        # Timed out or cut after the request left: Meta may have accepted it. The ledger
        # keeps 'sending'; report the doubt rather than risk a second reply.
        await _report_in_doubt(publisher, inbound, "reply_in_doubt", error=str(exc))
        return
    if exc.pauses:
        # Meta took nothing, and will take nothing from this sender until people fix its
        # token or number: the claim goes, and the message waits here as in any outage
        # (logged, with backoff; parked in the delay queue if it lasts), instead of being
        # recorded failed and never answered. Meanwhile the sender's pause gate
        # (pauses.py) asks Meta once per probe interval, and the responder stays ready.
        await ledger.release(inbound.wamid)
        REPLIES.labels("paused").inc()
        raise SenderPaused(str(exc))
    attempt = retry_attempt(message) + 1
    if exc.retryable and attempt <= max_retries:
        # Meta did not take it: free the claim and try again after a delay, without holding
        # a prefetch slot meanwhile.
        await ledger.release(inbound.wamid)
        await publisher.retry_later(message, RESPONDER_MESSAGES, attempt)
        REPLIES.labels("retry").inc()
        log.info("reply_retry_later", attempt=attempt, error=str(exc))
        return
    await ledger.settle(inbound.wamid, state="failed", sent_wamid=None, error_code=exc.code)
    await publisher.publish_envelope(failed_event(inbound, send, exc.as_payload(), utc_now()))
    REPLIES.labels("failed").inc()
    log.warning("reply_failed", error=str(exc), attempts=attempt)


async def _report_in_doubt(
    publisher: Publisher, inbound: InboundRef, why: str, **context: object
) -> None:
    """Publish `outbound.in_doubt` for the reply. The report outlasts an outage here, in place:
    raised to the consumer, the handler would run again for this delivery, take the 'sending'
    claim for its own, and send."""
    report = in_doubt_event(inbound, utc_now())
    await outlast_outage(
        lambda: publisher.publish_envelope(report), what="report of a reply in doubt"
    )
    REPLIES.labels("in_doubt").inc()
    log.warning(why, **context)


async def _replay(
    publisher: Publisher,
    inbound: InboundRef,
    decision: Send | Suppress,
    existing: adapters.LedgerEntry,
) -> None:
    """The message was handled before (a redelivery): publish its outcome again, never send.

    Re-publishing is safe because the outcome's event id is deterministic, and needed because
    the earlier attempt may have stopped between the ledger write and the publish.
    """
    now = utc_now()
    if existing.state == "sending":
        event = in_doubt_event(inbound, now)
        log.warning("reply_in_doubt")
    elif existing.state == "sent" and isinstance(decision, Send) and existing.wamid:
        event = sent_event(inbound, decision, existing.wamid, now)
    elif existing.state == "failed" and isinstance(decision, Send):
        error = {"code": existing.error_code, "http_status": None, "message": None}
        event = failed_event(inbound, decision, error, now)
    else:
        event = suppressed_event(inbound, "opted_out", now)
    REPLIES.labels("duplicate").inc()
    await publisher.publish_envelope(event)
