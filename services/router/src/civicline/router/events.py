"""What the router publishes, built from the parsed webhook: pure functions, no I/O.

Event ids come from the WhatsApp ids (docs/events.md), never from the position in a body: Meta
may redeliver the same message re-batched with others, and it must get the same id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from civicline.common.envelope import Envelope, event_id
from civicline.common.topology import (
    INBOUND_ERROR,
    INBOUND_REJECTED,
    handoff_key,
    message_key,
    status_key,
)
from civicline.router.core import (
    DeliveryStatus,
    InboundMessage,
    Route,
    WebhookError,
    has_letters,
)


@dataclass(frozen=True, slots=True)
class ContactState:
    """What the router knows of one citizen on one business number."""

    language: str | None = None
    opted_out: bool = False
    opted_out_at: datetime | None = None
    last_inbound_at: datetime | None = None
    # The time of the citizen's latest message that gave or withdrew consent (STOP, START, a
    # topic subscription): Meta does not guarantee order, and an older one delivered after it
    # changes nothing.
    consent_changed_at: datetime | None = None


# Delivery states that get their own routing key; anything else Meta invents is `status.other`
# (its real value stays in the payload), so a hostile value never shapes a routing key.
KNOWN_STATES = frozenset({"sent", "delivered", "read", "failed", "played", "deleted"})


def message_dedup_key(message: InboundMessage) -> str:
    return f"message:{message.wamid}"


def status_dedup_key(status: DeliveryStatus) -> str:
    return f"status:{status.wamid}:{status.status}"


def changes_consent(route: Route) -> bool:
    """Whether the message says if the citizen may be messaged at all: STOP, START, or a
    subscription to a topic (which asks for messages as plainly as START does)."""
    return route.intent in ("opt_out", "opt_in") or (
        route.intent == "subscribe" and route.topic is not None
    )


def superseded(contact: ContactState, message: InboundMessage, route: Route) -> bool:
    """A consent message older than the citizen's latest one, delivered after it (reference
    §4: order by timestamp, then by arrival): the newer word stands, this one changes nothing.
    Within one second, Meta's resolution, arrival order decides."""
    return (
        changes_consent(route)
        and contact.consent_changed_at is not None
        and message.timestamp < contact.consent_changed_at
    )


def apply_message(
    contact: ContactState, message: InboundMessage, route: Route, language: str
) -> ContactState:
    """The contact after this message: its language, its opt-out word, the 24-hour window."""
    last_inbound = message.timestamp
    if contact.last_inbound_at is not None and contact.last_inbound_at > last_inbound:
        last_inbound = contact.last_inbound_at
    updated = replace(contact, last_inbound_at=last_inbound)
    # Only letters say which language someone writes: "👍" or "12" must not reset it to English.
    if has_letters(message.text):
        updated = replace(updated, language=language)
    if superseded(contact, message, route):
        return updated
    if route.intent == "opt_out":
        # A repeated STOP keeps the time of the first: that is when consent was withdrawn.
        since = contact.opted_out_at if contact.opted_out else message.timestamp
        updated = replace(
            updated, opted_out=True, opted_out_at=since, consent_changed_at=message.timestamp
        )
    elif changes_consent(route):
        updated = replace(
            updated, opted_out=False, opted_out_at=None, consent_changed_at=message.timestamp
        )
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
        "handoff": route.handoff,
        "topic": route.topic,
        "raw_event_id": raw_event_id,
    }
    return Envelope(
        event_id=event_id("message", message.wamid),
        kind=message_key(route.intent),
        occurred_at=message.timestamp,
        correlation_id=message.wamid,
        payload=payload,
    )


def handoff_event(
    message: InboundMessage, route: Route, *, language: str, opted_out: bool, raw_event_id: str
) -> Envelope:
    """`handoff.<team>`: the citizen's message, for the agency's agent tool or CRM to pick up.

    Everything a person needs to answer is in it: who (wa_id and/or business-scoped user id,
    the business number to answer from), in which language, and what they wrote or shared.
    """
    assert route.handoff is not None
    return Envelope(
        event_id=event_id("handoff", message.wamid),
        kind=handoff_key(route.handoff),
        occurred_at=message.timestamp,
        correlation_id=message.wamid,
        payload={
            "team": route.handoff,
            "wamid": message.wamid,
            "phone_number_id": message.phone_number_id,
            "citizen": message.citizen_key(),
            "from": message.sender,
            "from_user_id": message.sender_user_id,
            "profile_name": message.profile_name,
            "timestamp": message.timestamp,
            "intent": route.intent,
            "urgent": route.urgent,
            "language": language,
            "type": message.type,
            "text": message.text,
            "content": message.content,
            "opted_out": opted_out,
            "raw_event_id": raw_event_id,
        },
    )


def routed_events(
    message: InboundMessage,
    route: Route,
    *,
    before: ContactState,
    after: ContactState,
    language: str,
    raw_event_id: str,
) -> list[Envelope]:
    """`message.<intent>`, plus `handoff.<team>` for an intent handed to people.

    A STOP from a citizen who had already opted out needs no reply: they get one confirmation,
    not one per STOP.
    """
    if route.intent == "opt_out" and before.opted_out:
        route = replace(route, needs_reply=False)
    events = [
        message_event(
            message, route, language=language, opted_out=after.opted_out, raw_event_id=raw_event_id
        )
    ]
    if route.handoff is not None:
        events.append(
            handoff_event(
                message,
                route,
                language=language,
                opted_out=after.opted_out,
                raw_event_id=raw_event_id,
            )
        )
    return events


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
            "biz_opaque_callback_data": status.callback_data,
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
