"""The responder's pure core: whether and what to answer, and the events that record it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from civicline.common.envelope import Envelope, event_id
from civicline.common.topology import (
    OUTBOUND_FAILED,
    OUTBOUND_IN_DOUBT,
    OUTBOUND_SENT,
    OUTBOUND_SUPPRESSED,
)
from civicline.responder.catalog import (
    NO_REPLY_INTENTS,
    Catalog,
    Reply,
    choose_reply,
    to_graph_message,
)

# Intents whose confirmation goes out even to an opted-out citizen: they just asked for it.
_ANSWERED_WHEN_OPTED_OUT = frozenset({"opt_out", "opt_in"})


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

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> InboundRef:
        """Raises KeyError/TypeError on a payload of the wrong shape (a poison message)."""
        recipient = payload.get("from") or payload.get("from_user_id")
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
            **fields,
        )


@dataclass(frozen=True, slots=True)
class Send:
    reply: Reply
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Suppress:
    reason: str


@dataclass(frozen=True, slots=True)
class NoReply:
    """Nothing to send and nothing to record (a reaction)."""


Decision = Send | Suppress | NoReply


def decide(inbound: InboundRef, catalog: Catalog) -> Decision:
    if not inbound.needs_reply or inbound.intent in NO_REPLY_INTENTS:
        return NoReply()
    if inbound.opted_out and inbound.intent not in _ANSWERED_WHEN_OPTED_OUT:
        return Suppress("opted_out")
    reply = choose_reply(catalog, inbound.intent, inbound.language)
    return Send(reply, to_graph_message(reply, to=inbound.recipient, reply_to=inbound.wamid))


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
