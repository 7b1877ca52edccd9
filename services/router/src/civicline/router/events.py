"""What the router publishes, built from the parsed webhook: pure functions, no I/O.

Event ids come from the WhatsApp ids (docs/events.md), never from the position in a body: Meta
may redeliver the same message re-batched with others, and it must get the same id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from civicline.common.envelope import Envelope, event_id
from civicline.common.topology import INBOUND_ERROR, INBOUND_REJECTED, message_key, status_key
from civicline.router.core import DeliveryStatus, InboundMessage, Route, WebhookError


@dataclass(frozen=True, slots=True)
class ContactState:
    """What the router knows of one citizen on one business number."""

    language: str | None = None
    opted_out: bool = False
    opted_out_at: datetime | None = None
    last_inbound_at: datetime | None = None


# Delivery states that get their own routing key; anything else Meta invents is `status.other`
# (its real value stays in the payload), so a hostile value never shapes a routing key.
KNOWN_STATES = frozenset({"sent", "delivered", "read", "failed", "played", "deleted"})


def message_dedup_key(message: InboundMessage) -> str:
    return f"message:{message.wamid}"


def status_dedup_key(status: DeliveryStatus) -> str:
    return f"status:{status.wamid}:{status.status}"


def apply_message(
    contact: ContactState, message: InboundMessage, route: Route, language: str
) -> ContactState:
    """The contact after this message: its language, its opt-out word, the 24-hour window."""
    last_inbound = message.timestamp
    if contact.last_inbound_at is not None and contact.last_inbound_at > last_inbound:
        last_inbound = contact.last_inbound_at
    updated = replace(contact, last_inbound_at=last_inbound)
    if message.text:
        updated = replace(updated, language=language)
    if route.intent == "opt_out":
        updated = replace(updated, opted_out=True, opted_out_at=message.timestamp)
    elif route.intent == "opt_in":
        updated = replace(updated, opted_out=False, opted_out_at=None)
    return updated


def message_event(
    message: InboundMessage, route: Route, *, language: str, opted_out: bool, raw_event_id: str
) -> Envelope:
    payload: dict[str, Any] = {
        "wamid": message.wamid,
        "phone_number_id": message.phone_number_id,
        "display_phone_number": message.display_phone_number,
        "waba_id": message.waba_id,
        "from": message.sender,
        "from_user_id": message.sender_user_id,
        "profile_name": message.profile_name,
        "timestamp": message.timestamp,
        "type": message.type,
        "text": message.text,
        "reply_id": message.reply_id,
        "context_id": message.context_id,
        "content": message.content,
        "errors": list(message.errors),
        "language": language,
        "intent": route.intent,
        "urgent": route.urgent,
        "needs_reply": route.needs_reply,
        "opted_out": opted_out,
        "raw_event_id": raw_event_id,
    }
    return Envelope(
        event_id=event_id("message", message.wamid),
        kind=message_key(route.intent),
        occurred_at=message.timestamp,
        correlation_id=message.wamid,
        payload=payload,
    )


def status_event(status: DeliveryStatus, *, raw_event_id: str) -> Envelope:
    return Envelope(
        event_id=event_id("status", status.wamid, status.status),
        kind=status_key(status.status if status.status in KNOWN_STATES else "other"),
        occurred_at=status.timestamp,
        correlation_id=status.wamid,
        payload={
            "wamid": status.wamid,
            "status": status.status,
            "phone_number_id": status.phone_number_id,
            "recipient_id": status.recipient_id,
            "timestamp": status.timestamp,
            "errors": list(status.errors),
            "pricing": status.pricing,
            "conversation": status.conversation,
            "raw_event_id": raw_event_id,
        },
    )


def error_event(
    error: WebhookError, *, position: int, raw_event_id: str, received_at: datetime
) -> Envelope:
    return Envelope(
        event_id=event_id("error", raw_event_id, str(position)),
        kind=INBOUND_ERROR,
        occurred_at=received_at,
        correlation_id=raw_event_id,
        payload={
            "phone_number_id": error.phone_number_id,
            "code": error.code,
            "title": error.title,
            "message": error.message,
            "details": error.details,
            "raw": error.raw,
            "raw_event_id": raw_event_id,
        },
    )


def rejected_event(*, raw_event_id: str, reason: str, received_at: datetime) -> Envelope:
    return Envelope(
        event_id=event_id("rejected", raw_event_id),
        kind=INBOUND_REJECTED,
        occurred_at=received_at,
        correlation_id=raw_event_id,
        payload={"raw_event_id": raw_event_id, "reason": reason},
    )
