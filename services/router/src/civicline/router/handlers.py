"""router's message handler: raw webhook → one event per new message, status and error.

Handlers run concurrently (prefetch) and hand their parsed webhook to one batcher, which
routes a batch at a time in one transaction: one statement claims every WhatsApp id, two lock
the batch's contacts, one saves them, and the events are published (confirmed) before commit.
Batches run one after another in arrival order, so each citizen's messages keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter, Histogram

from civicline.common.amqp import MessageHandler, PoisonMessage, Publisher
from civicline.common.batching import Batcher
from civicline.common.envelope import Envelope
from civicline.router import adapters
from civicline.router.batch import Delivered, contacts_needed, dedup_keys, plan_batch
from civicline.router.core import ParsedWebhook, parse_webhook
from civicline.router.events import rejected_event
from civicline.router.rules import Rules

log = structlog.get_logger(__name__)

ROUTED = Counter("civicline_router_events_total", "Events the router published", ["kind"])
DUPLICATES = Counter("civicline_router_duplicates_total", "Messages and statuses seen before")
REJECTED = Counter("civicline_router_rejected_total", "Signed webhooks that could not be parsed")
BATCH_SIZE = Histogram(
    "civicline_router_batch_webhooks",
    "Webhooks routed per transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)


def router_batcher(
    pool: asyncpg.Pool, publisher: Publisher, rules: Rules, *, size: int, linger: float
) -> Batcher[Delivered, None]:
    async def route(batch: Sequence[Delivered]) -> list[None]:
        async with pool.acquire() as connection, connection.transaction():
            unseen = await adapters.claim_unseen(connection, dedup_keys(batch))
            contacts = await adapters.lock_contacts(connection, contacts_needed(batch, unseen))
            plan = plan_batch(batch, unseen, contacts, rules)
            await adapters.save_contacts(connection, plan.contacts)
            for consent in plan.consents:  # rare: one statement each is fine
                await adapters.record_consent(
                    connection,
                    *consent.contact,
                    consent.route,
                    wamid=consent.wamid,
                    at=consent.at,
                )
            # Published before commit: if a publish fails the claims roll back and the
            # redelivered webhooks are routed again (same event ids, so no duplicates).
            await publish_lanes(publisher, plan.lanes)
        DUPLICATES.inc(plan.duplicates)
        BATCH_SIZE.observe(len(batch))
        for event in plan.events:
            ROUTED.labels(event.kind).inc()
        log.info("webhooks_routed", webhooks=len(batch), events=len(plan.events))
        return [None] * len(batch)

    return Batcher(route, size=size, linger=linger, name="router")


async def publish_lanes(publisher: Publisher, lanes: Sequence[Sequence[Envelope]]) -> None:
    """Every lane in order, all lanes at once (their confirms overlap); returns when every
    publish is confirmed, or raises the first failure once none is still in flight."""

    async def lane(events: Sequence[Envelope]) -> None:
        for event in events:
            await publisher.publish_envelope(event)

    outcomes = await asyncio.gather(*(lane(events) for events in lanes), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def router_handler(publisher: Publisher, batcher: Batcher[Delivered, None]) -> MessageHandler:
    async def handle(message: AbstractIncomingMessage) -> None:
        raw_event_id = message.message_id or ""
        received_at = _received_at(message.headers)
        parsed, reason = _parse(message.body, received_at)
        if parsed is None or parsed.rejected_reason is not None:
            why = reason or (parsed.rejected_reason if parsed else None) or "unparseable"
            await publisher.publish_envelope(
                rejected_event(raw_event_id=raw_event_id, reason=why, received_at=received_at)
            )
            REJECTED.inc()
            # Kept for inspection in the dead-letter queue; never requeued.
            raise PoisonMessage(f"webhook rejected: {why}")
        # No await before this: webhooks enter the batcher in the order they arrived.
        await batcher.submit(Delivered(parsed, raw_event_id, received_at))

    return handle


def _parse(body: bytes, received_at: datetime) -> tuple[ParsedWebhook | None, str | None]:
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"body is not JSON: {exc}"
    return parse_webhook(payload, received_at=received_at), None


def _received_at(headers: dict[str, Any]) -> datetime:
    try:
        moment = datetime.fromisoformat(str(headers.get("x-received-at")))
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
