"""The responder's pure core: whether and what to answer, and the events that record it.

The rules a citizen sees, in the order `decide` applies them:
- a reaction (or a message the router marked `needs_reply: false`) gets nothing;
- an opted-out citizen gets nothing but the opt-out / opt-in confirmations;
- outside the 24-hour customer-service window only the intent's approved template may go;
- inside it, the catalog reply (a shared location picks the nearest place of a location
  reply), plus — once per conversation, outside office hours — the away notice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from civicline.common.envelope import Envelope, event_id
from civicline.common.intents import SUBSCRIPTION_INTENTS
from civicline.common.topics import SUBSCRIBE_ID_PREFIX, UNSUBSCRIBE_ID_PREFIX, Topics
from civicline.common.topology import (
    OUTBOUND_FAILED,
    OUTBOUND_IN_DOUBT,
    OUTBOUND_SENT,
    OUTBOUND_SUPPRESSED,
)
from civicline.responder.catalog import (
    NO_REPLY_INTENTS,
    Catalog,
    Place,
    Reply,
    Row,
    Section,
    choose_away,
    choose_reply,
    choose_template,
    to_graph_message,
)

# Intents whose confirmation goes out even to an opted-out citizen: they just asked for it.
_ANSWERED_WHEN_OPTED_OUT: Final = frozenset({"opt_out", "opt_in", *SUBSCRIPTION_INTENTS})
# The away notice never follows these: a STOP / START confirmation must stay the only message,
# an urgent report is answered by an on-call team, and the office-hours answer already says it.
_NO_AWAY_INTENTS: Final = frozenset(
    {"opt_out", "opt_in", "report_abuse", "office_hours", *SUBSCRIPTION_INTENTS}
)
# Where a subscription confirmation names its topic.
TOPIC_PLACEHOLDER: Final = "{topic}"

# Meta's customer-service window: free-form messages only within 24 h of the citizen's last
# message (reference §6; error 131047 otherwise).
SERVICE_WINDOW: Final = timedelta(hours=24)
_EARTH_RADIUS_KM: Final = 6371.0088  # the mean Earth radius (IUGG)


@dataclass(frozen=True, slots=True)
class InboundRef:
    """The part of a classified message the responder needs."""

    wamid: str
    phone_number_id: str
    recipient: str
    intent: str
    language: str
    needs_reply: bool
    opted_out: bool
    # When the citizen sent it (WhatsApp's timestamp); None if the payload had none.
    timestamp: datetime | None = None
    # (latitude, longitude) when the citizen shared a location.
    location: tuple[float, float] | None = None
    # The citizen has no phone number, only a business-scoped user id (a username).
    by_user_id: bool = False
    urgent: bool = False
    # The subscription topic of a subscribe / unsubscribe (None: none named, send the list).
    topic: str | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> InboundRef:
        """Raises KeyError/TypeError on a payload of the wrong shape (a poison message)."""
        phone = payload.get("from")
        recipient = phone or payload.get("from_user_id")
        if not isinstance(recipient, str) or not recipient:
            raise KeyError("from")
        fields = {
            name: payload[name] for name in ("wamid", "phone_number_id", "intent", "language")
        }
        if not all(isinstance(value, str) for value in fields.values()):
            raise TypeError("wamid, phone_number_id, intent and language must be strings")
        return cls(
            recipient=recipient,
            needs_reply=bool(payload.get("needs_reply", True)),
            opted_out=bool(payload.get("opted_out", False)),
            timestamp=_moment(payload.get("timestamp")),
            location=_shared_location(payload),
            by_user_id=not phone,
            urgent=payload.get("urgent") is True,
            topic=payload["topic"] if isinstance(payload.get("topic"), str) else None,
            **fields,
        )


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _shared_location(payload: Mapping[str, Any]) -> tuple[float, float] | None:
    content = payload.get("content")
    if payload.get("type") != "location" or not isinstance(content, Mapping):
        return None
    latitude = _coordinate(content.get("latitude"), 90.0)
    longitude = _coordinate(content.get("longitude"), 180.0)
    if latitude is None or longitude is None:
        return None
    return latitude, longitude


def _coordinate(value: object, bound: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and -bound <= number <= bound else None


@dataclass(frozen=True, slots=True)
class Away:
    """The away notice to send after the reply (outside office hours)."""

    reply: Reply
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Send:
    reply: Reply
    message: dict[str, Any]
    away: Away | None = None


@dataclass(frozen=True, slots=True)
class Suppress:
    reason: str


@dataclass(frozen=True, slots=True)
class NoReply:
    """Nothing to send and nothing to record (a reaction)."""


Decision = Send | Suppress | NoReply


def within_window(inbound_at: datetime | None, now: datetime) -> bool:
    """Free-form replies are allowed while `now - inbound_at < 24 h` (a missing time: the
    message has just arrived; a time in the future: clock skew, still inside)."""
    if inbound_at is None:
        return True
    return now - inbound_at < SERVICE_WINDOW


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in kilometres between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def nearest(places: Sequence[Place], position: tuple[float, float]) -> Place:
    """The place closest to `position` by great-circle distance; the first of equals."""
    if not places:
        raise ValueError("no places to choose from")
    return min(places, key=lambda place: haversine_km(position, (place.latitude, place.longitude)))


def decide(
    inbound: InboundRef,
    catalog: Catalog,
    *,
    now: datetime | None = None,
    topics: Topics | None = None,
) -> Decision:
    """What to do with one classified message; `now` defaults to the current time."""
    moment = now if now is not None else datetime.now(UTC)
    if not inbound.needs_reply or inbound.intent in NO_REPLY_INTENTS:
        return NoReply()
    if inbound.opted_out and inbound.intent not in _ANSWERED_WHEN_OPTED_OUT:
        return Suppress("opted_out")
    if consent_superseded(inbound):
        return Suppress("superseded")
    if not within_window(inbound.timestamp, moment):
        return template_reply(inbound, catalog)
    if inbound.intent in SUBSCRIPTION_INTENTS and topics is not None:
        reply = subscription_reply(catalog, topics, inbound)
        return Send(reply, _message(inbound, reply, reply_to=inbound.wamid))
    reply = choose_reply(catalog, inbound.intent, inbound.language)
    place = None
    if reply.type == "location" and inbound.location is not None:
        place = nearest(reply.places, inbound.location)
    message = _message(inbound, reply, reply_to=inbound.wamid, place=place)
    return Send(reply, message, away=_away(inbound, catalog, moment))


def template_reply(inbound: InboundRef, catalog: Catalog) -> Send:
    """The intent's approved template, the one message Meta delivers outside the 24-hour
    window (reference §6), with no away notice (free-form text, which would be refused)."""
    template = choose_template(catalog, inbound.intent, inbound.language)
    return Send(template, _message(inbound, template, reply_to=inbound.wamid))


def window_closed_fallback(inbound: InboundRef, send: Send, catalog: Catalog) -> Send | None:
    """What to send once Meta refused `send` with 131047 (the window had closed by the time it
    went, e.g. a backlog near 24 h): the template instead, as §6 says; None if it was one."""
    if send.reply.type == "template":
        return None
    return template_reply(inbound, catalog)


def consent_superseded(inbound: InboundRef) -> bool:
    """A STOP, START or topic subscription that the router found older than the citizen's
    latest such message (Meta delivered them out of order), so it changed nothing: confirming
    it would tell the citizen the opposite of what holds. The router's `opted_out` says what
    does."""
    if inbound.intent == "opt_out":
        return not inbound.opted_out
    if inbound.intent == "opt_in" or (inbound.intent == "subscribe" and inbound.topic is not None):
        return inbound.opted_out
    return False


def subscription_reply(catalog: Catalog, topics: Topics, inbound: InboundRef) -> Reply:
    """The confirmation naming the topic in the citizen's language; without a topic we know,
    the topic list, whose rows subscribe (or unsubscribe) with one tap."""
    if inbound.topic is not None and inbound.topic in topics:
        reply = choose_reply(catalog, inbound.intent, inbound.language)
        title = topics.title(inbound.topic, reply.language)
        return replace(reply, body=reply.body.replace(TOPIC_PLACEHOLDER, title))
    prefix = SUBSCRIBE_ID_PREFIX if inbound.intent == "subscribe" else UNSUBSCRIBE_ID_PREFIX
    menu = topics.menu(inbound.language)
    rows = tuple(
        Row(
            id=f"{prefix}{name}",
            title=topics.title(name, inbound.language),
            description=topics.description(name, inbound.language),
        )
        for name in topics.topics
    )
    return Reply(
        intent=inbound.intent,
        language=inbound.language,
        type="list",
        body=menu.body,
        list_button=menu.button,
        sections=(Section(title=None, rows=rows),),
    )


def _message(
    inbound: InboundRef, reply: Reply, *, reply_to: str | None, place: Place | None = None
) -> dict[str, Any]:
    return to_graph_message(
        reply, to=inbound.recipient, reply_to=reply_to, by_user_id=inbound.by_user_id, place=place
    )


def _away(inbound: InboundRef, catalog: Catalog, now: datetime) -> Away | None:
    if catalog.office is None or catalog.office.is_open(now):
        return None
    if inbound.urgent or inbound.intent in _NO_AWAY_INTENTS:
        return None
    reply = choose_away(catalog, inbound.language)
    if reply is None:
        return None
    # Not in context: it is about the conversation, not a reply to this one message.
    return Away(reply, _message(inbound, reply, reply_to=None))


# --- events -----------------------------------------------------------------------------------


def _outcome(kind: str, inbound: InboundRef, at: datetime, payload: dict[str, Any]) -> Envelope:
    return Envelope(
        event_id=event_id(kind, inbound.wamid),
        kind=kind,
        occurred_at=at,
        correlation_id=inbound.wamid,
        payload={
            "in_reply_to": inbound.wamid,
            "to": inbound.recipient,
            "phone_number_id": inbound.phone_number_id,
            "intent": inbound.intent,
            **payload,
        },
    )


def sent_event(inbound: InboundRef, send: Send, wamid: str, at: datetime) -> Envelope:
    return _outcome(
        OUTBOUND_SENT,
        inbound,
        at,
        {"wamid": wamid, "language": send.reply.language, "message": send.message},
    )


def failed_event(
    inbound: InboundRef, send: Send, error: Mapping[str, Any], at: datetime
) -> Envelope:
    return _outcome(
        OUTBOUND_FAILED,
        inbound,
        at,
        {"error": dict(error), "language": send.reply.language, "message": send.message},
    )


def suppressed_event(inbound: InboundRef, reason: str, at: datetime) -> Envelope:
    return _outcome(OUTBOUND_SUPPRESSED, inbound, at, {"reason": reason})


def in_doubt_event(inbound: InboundRef, at: datetime) -> Envelope:
    """A reply was being sent when the responder stopped; whether Meta got it is unknown, so it
    is reported instead of sent again."""
    return _outcome(OUTBOUND_IN_DOUBT, inbound, at, {"reason": "send_outcome_unknown"})


def away_correlation_id(inbound: InboundRef) -> str:
    """The away notice is its own unit of work (own idempotency key), about the conversation
    rather than the message that triggered it, so it is correlated by that key."""
    return f"away:{inbound.wamid}"


def away_event(
    kind: str, inbound: InboundRef, away: Away, at: datetime, outcome: Mapping[str, Any]
) -> Envelope:
    """`outbound.sent` / `outbound.failed` / `outbound.in_doubt` for an away notice."""
    return Envelope(
        event_id=event_id(kind, inbound.wamid, "away"),
        kind=kind,
        occurred_at=at,
        correlation_id=away_correlation_id(inbound),
        payload={
            "in_reply_to": inbound.wamid,
            "to": inbound.recipient,
            "phone_number_id": inbound.phone_number_id,
            "intent": inbound.intent,
            "purpose": "away",
            "language": away.reply.language,
            "message": away.message,
            **outcome,
        },
    )
