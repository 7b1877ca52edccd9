"""router's message handler: raw webhook → one event per new message, status and error."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter

from civicline.common.amqp import MessageHandler, PoisonMessage, Publisher
from civicline.common.envelope import Envelope
from civicline.common.ordering import CitizenTurns
from civicline.router import adapters
from civicline.router.core import ParsedWebhook, detect_language, parse_webhook
from civicline.router.events import (
    apply_message,
    error_event,
    message_dedup_key,
    rejected_event,
    routed_events,
    status_dedup_key,
    status_event,
)
from civicline.router.rules import Rules, classify

log = structlog.get_logger(__name__)

ROUTED = Counter("civicline_router_events_total", "Events the router published", ["kind"])
DUPLICATES = Counter("civicline_router_duplicates_total", "Messages and statuses seen before")
REJECTED = Counter("civicline_router_rejected_total", "Signed webhooks that could not be parsed")


def router_handler(pool: asyncpg.Pool, publisher: Publisher, rules: Rules) -> MessageHandler:
    turns = CitizenTurns()

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
        # Before any await: turns are granted in the order webhooks arrived.
        async with turns.turn(*(m.citizen_key() for m in parsed.messages)):
            async with pool.acquire() as connection, connection.transaction():
                events = await _new_events(connection, parsed, rules, raw_event_id, received_at)
                # Published before commit: if a publish fails the claims roll back and the
                # redelivered webhook is routed again (same event ids, so no duplicates).
                for event in events:
                    await publisher.publish_envelope(event)
                    ROUTED.labels(event.kind).inc()
            log.info("webhook_routed", events=len(events), kinds=sorted({e.kind for e in events}))

    return handle


def _parse(body: bytes, received_at: datetime) -> tuple[ParsedWebhook | None, str | None]:
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"body is not JSON: {exc}"
    return parse_webhook(payload, received_at=received_at), None


async def _new_events(
    connection: asyncpg.Connection,
    parsed: ParsedWebhook,
    rules: Rules,
    raw_event_id: str,
    received_at: datetime,
) -> list[Envelope]:
    keys = [message_dedup_key(m) for m in parsed.messages]
    keys += [status_dedup_key(s) for s in parsed.statuses]
    unseen = await adapters.claim_unseen(connection, keys)
    DUPLICATES.inc(len(keys) - len(unseen))
    events: list[Envelope] = []
    # Oldest first, so a "STOP" then a question from one citizen are applied in order.
    for inbound in sorted(parsed.messages, key=lambda m: m.timestamp):
        if message_dedup_key(inbound) not in unseen:
            continue
        citizen = inbound.citizen_key()
        contact = await adapters.lock_contact(connection, inbound.phone_number_id, citizen)
        language = detect_language(inbound.text, contact.language)
        route = classify(inbound, rules)
        updated = apply_message(contact, inbound, route, language)
        await adapters.save_contact(connection, inbound.phone_number_id, citizen, updated)
        await adapters.record_consent(
            connection,
            inbound.phone_number_id,
            citizen,
            route,
            wamid=inbound.wamid,
            at=inbound.timestamp,
        )
        events += routed_events(
            inbound,
            route,
            before=contact,
            after=updated,
            language=language,
            raw_event_id=raw_event_id,
        )
    events += [
        status_event(status, raw_event_id=raw_event_id)
        for status in parsed.statuses
        if status_dedup_key(status) in unseen
    ]
    events += [
        error_event(error, position=i, raw_event_id=raw_event_id, received_at=received_at)
        for i, error in enumerate(parsed.errors)
    ]
    return events


def _received_at(headers: dict[str, Any]) -> datetime:
    try:
        moment = datetime.fromisoformat(str(headers.get("x-received-at")))
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
