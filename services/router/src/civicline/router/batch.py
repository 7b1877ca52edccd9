"""What one batch of webhooks turns into: pure functions, no I/O.

The router takes webhooks in batches (one transaction each). Given the dedup keys the database
had not seen and the contacts it locked, `plan_batch` decides every event to publish and every
contact to save, in the order the webhooks arrived, exactly as handling them one by one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from civicline.common.envelope import Envelope
from civicline.router.core import InboundMessage, ParsedWebhook, Route, detect_language
from civicline.router.events import (
    ContactState,
    apply_message,
    error_event,
    message_dedup_key,
    routed_events,
    status_dedup_key,
    status_event,
    superseded,
)
from civicline.router.rules import Rules, classify

# A contact is one citizen on one business number.
ContactKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Delivered:
    """One signed, parsed webhook as the router received it."""

    parsed: ParsedWebhook
    raw_event_id: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Consent:
    contact: ContactKey
    route: Route
    wamid: str
    at: datetime


CONSENT_INTENTS = frozenset({"subscribe", "unsubscribe", "opt_out"})


@dataclass(slots=True)
class BatchPlan:
    # Events to publish. Each lane must be published in order (one citizen's events); lanes
    # are independent of each other.
    lanes: list[list[Envelope]] = field(default_factory=list)
    # Contacts whose state changed, as they are after the batch.
    contacts: dict[ContactKey, ContactState] = field(default_factory=dict)
    # Messages that give or withdraw consent (subscribe, unsubscribe, STOP), in order.
    consents: list[Consent] = field(default_factory=list)
    duplicates: int = 0

    @property
    def events(self) -> list[Envelope]:
        return [event for lane in self.lanes for event in lane]


def contact_key(message: InboundMessage) -> ContactKey:
    return (message.phone_number_id, message.citizen_key())


def _messages_in_order(delivered: Delivered) -> list[InboundMessage]:
    # Oldest first, so a "STOP" then a question from one citizen are applied in order.
    return sorted(delivered.parsed.messages, key=lambda m: m.timestamp)


def dedup_keys(batch: Sequence[Delivered]) -> list[str]:
    """Every message and status key in the batch, to be claimed in one statement."""
    keys: list[str] = []
    for delivered in batch:
        keys += [message_dedup_key(m) for m in delivered.parsed.messages]
        keys += [status_dedup_key(s) for s in delivered.parsed.statuses]
    return keys


def contacts_needed(batch: Sequence[Delivered], unseen: set[str]) -> list[ContactKey]:
    """The contacts of the batch's new messages, sorted: locked in one order, two routers
    never deadlock on each other."""
    return sorted(
        {
            contact_key(m)
            for delivered in batch
            for m in delivered.parsed.messages
            if message_dedup_key(m) in unseen
        }
    )


def plan_batch(
    batch: Sequence[Delivered],
    unseen: set[str],
    contacts: dict[ContactKey, ContactState],
    rules: Rules,
) -> BatchPlan:
    """The events and contact changes for `batch`, given the keys the database had not seen
    (a key repeated within the batch counts once: Meta may redeliver a webhook right away)."""
    fresh = set(unseen)
    plan = BatchPlan()
    citizen_lanes: dict[ContactKey, list[Envelope]] = {}
    state = dict(contacts)
    for delivered in batch:
        for inbound in _messages_in_order(delivered):
            if not _take(fresh, message_dedup_key(inbound)):
                plan.duplicates += 1
                continue
            key = contact_key(inbound)
            before = state.get(key, ContactState())
            language = detect_language(inbound.text, before.language)
            route = classify(inbound, rules)
            after = apply_message(before, inbound, route, language)
            state[key] = plan.contacts[key] = after
            if route.intent in CONSENT_INTENTS and not _withdrawn_since(before, inbound, route):
                plan.consents.append(Consent(key, route, inbound.wamid, inbound.timestamp))
            lane = citizen_lanes.setdefault(key, [])
            if not lane:
                plan.lanes.append(lane)
            lane += routed_events(
                inbound,
                route,
                before=before,
                after=after,
                language=language,
                raw_event_id=delivered.raw_event_id,
            )
        for status in delivered.parsed.statuses:
            if _take(fresh, status_dedup_key(status)):
                plan.lanes.append([status_event(status, raw_event_id=delivered.raw_event_id)])
            else:
                plan.duplicates += 1
        plan.lanes += [
            [
                error_event(
                    error,
                    position=i,
                    raw_event_id=delivered.raw_event_id,
                    received_at=delivered.received_at,
                )
            ]
            for i, error in enumerate(delivered.parsed.errors)
        ]
    return plan


def _withdrawn_since(contact: ContactState, message: InboundMessage, route: Route) -> bool:
    """A topic subscription older than a STOP the citizen sent later (delivered first): the
    STOP withdrew it, so it is not recorded. Every other consent is recorded, each in its own
    order: a subscription's row keeps its latest change, and a STOP withdraws only the
    subscriptions given before it (adapters.record_consent)."""
    return superseded(contact, message, route) and route.intent == "subscribe" and contact.opted_out


def _take(fresh: set[str], key: str) -> bool:
    if key in fresh:
        fresh.discard(key)
        return True
    return False
