"""What the router publishes for a parsed message: ids, routing keys, contact state."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson

from civicline.common.envelope import Envelope
from civicline.common.topology import event_routing_key
from civicline.router.core import DeliveryStatus, InboundMessage, Route, parse_webhook
from civicline.router.events import (
    ContactState,
    apply_message,
    handoff_event,
    message_event,
    routed_events,
    status_event,
)
from civicline.simulator import status_webhook

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def inbound(
    text: str | None = "투표소", wamid: str = "wamid.A", at: datetime = T0
) -> InboundMessage:
    return InboundMessage(
        wamid="wamid.A",
        phone_number_id="106512349876543",
        display_phone_number="15550100200",
        waba_id="109384756102938",
        sender="821052347781",
        sender_user_id=None,
        profile_name=None,
        timestamp=at,
        type="text",
        text=text,
        reply_id=None,
        context_id=None,
        content={"body": text},
        errors=(),
    )


VOTING = Route(intent="voting", urgent=False, needs_reply=True)


def test_the_same_message_gets_the_same_event_id_whatever_it_was_classified_as() -> None:
    first = message_event(inbound(), VOTING, language="ko", opted_out=False, raw_event_id="r1")
    again = message_event(
        inbound(),
        Route(intent="unknown", urgent=False, needs_reply=True),
        language="ko",
        opted_out=False,
        raw_event_id="r2",
    )
    assert first.event_id == again.event_id
    assert first.kind == "message.voting"
    assert first.correlation_id == "wamid.A"


def test_message_event_round_trips_through_the_envelope_codec() -> None:
    event = message_event(inbound(), VOTING, language="ko", opted_out=False, raw_event_id="r1")
    decoded = Envelope.decode(event.encode())
    assert decoded.payload["text"] == "투표소"
    assert decoded.payload["from"] == "821052347781"
    assert decoded.payload["phone_number_id"] == "106512349876543"
    assert decoded.payload["language"] == "ko"


def test_unknown_delivery_states_do_not_shape_routing_keys() -> None:
    status = DeliveryStatus(
        wamid="wamid.S",
        phone_number_id="106512349876543",
        status="weird.#.state",
        timestamp=T0,
        recipient_id="821052347781",
        errors=(),
        pricing=None,
        conversation=None,
    )
    assert status_event(status, raw_event_id="r").kind == "status.other"
    read = dataclasses.replace(status, status="read")
    assert status_event(read, raw_event_id="r").kind == "status.read"


def test_a_status_of_a_campaign_message_is_routed_apart_from_those_of_replies() -> None:
    body = status_webhook(
        wamid="wamid.C",
        status="delivered",
        recipient_id="821052347781",
        callback_data="civicline.campaign:5c6f9d4e-8a0b-4f3e-9d2a-7b1c0e4f6a11",
    )
    [campaign] = parse_webhook(orjson.loads(body), received_at=T0).statuses
    event = status_event(campaign, raw_event_id="r")
    assert event.kind == "status.delivered"  # what it is, for the audit's filters
    assert event_routing_key(event.kind, event.payload) == "status.delivered.campaign"
    reply = dataclasses.replace(campaign, callback_data=None)
    event = status_event(reply, raw_event_id="r")
    assert event_routing_key(event.kind, event.payload) == "status.delivered"
    # Callback data of someone else's making (another app on the number) is not a campaign.
    other = dataclasses.replace(campaign, callback_data="crm:ticket:41")
    event = status_event(other, raw_event_id="r")
    assert event_routing_key(event.kind, event.payload) == "status.delivered"


def test_opt_out_and_opt_in_change_the_contact() -> None:
    stop = apply_message(
        ContactState(), inbound("STOP"), Route("opt_out", urgent=False, needs_reply=True), "en"
    )
    assert stop.opted_out
    assert stop.opted_out_at == T0
    start = apply_message(
        stop,
        inbound("START", at=T0 + timedelta(minutes=1)),
        Route("opt_in", urgent=False, needs_reply=True),
        "en",
    )
    assert not start.opted_out
    assert start.opted_out_at is None


def test_last_inbound_time_never_moves_back_for_a_late_redelivery() -> None:
    later = ContactState(last_inbound_at=T0 + timedelta(hours=1))
    assert apply_message(later, inbound(), VOTING, "ko").last_inbound_at == T0 + timedelta(hours=1)


def test_language_is_remembered_only_from_messages_with_text() -> None:
    contact = ContactState(language="ja")
    assert apply_message(contact, inbound(text=None), VOTING, "en").language == "ja"
    assert apply_message(contact, inbound(), VOTING, "ko").language == "ko"


def test_emoji_or_digits_alone_do_not_change_the_stored_language() -> None:
    contact = ContactState(language="ko")
    assert apply_message(contact, inbound(text="👍🙏"), VOTING, "en").language == "ko"
    assert apply_message(contact, inbound(text="2026"), VOTING, "en").language == "ko"
    assert apply_message(ContactState(), inbound(text="🆘"), VOTING, "en").language is None


def test_a_repeated_stop_keeps_the_time_consent_was_withdrawn() -> None:
    stop = Route("opt_out", urgent=False, needs_reply=True)
    first = apply_message(ContactState(), inbound("STOP"), stop, "en")
    again = apply_message(first, inbound("STOP", at=T0 + timedelta(days=1)), stop, "en")
    assert again.opted_out_at == T0


ABUSE = Route("report_abuse", urgent=True, needs_reply=True, handoff="protection")


def test_routed_events_add_a_handoff_event_for_a_handed_off_intent() -> None:
    message = inbound("남편이 때려요")
    before, after = ContactState(), ContactState(language="ko", last_inbound_at=T0)
    events = routed_events(
        message, ABUSE, before=before, after=after, language="ko", raw_event_id="r1"
    )
    assert [e.kind for e in events] == ["message.report_abuse", "handoff.protection"]
    message_payload, handoff = events[0].payload, events[1]
    assert message_payload["handoff"] == "protection"
    assert handoff.correlation_id == "wamid.A"
    assert handoff.occurred_at == T0
    assert handoff.event_id != events[0].event_id
    assert handoff.payload["team"] == "protection"
    assert handoff.payload["citizen"] == "821052347781"
    assert handoff.payload["text"] == "남편이 때려요"
    assert handoff.payload["language"] == "ko"
    assert handoff.payload["urgent"] is True
    assert handoff.payload["phone_number_id"] == "106512349876543"
    decoded = Envelope.decode(handoff.encode())
    assert decoded.payload["timestamp"] == "2026-11-03T09:00:00Z"


def test_the_handoff_event_id_is_the_same_on_redelivery() -> None:
    first = handoff_event(inbound(), ABUSE, language="ko", opted_out=False, raw_event_id="r1")
    again = handoff_event(inbound(), ABUSE, language="ko", opted_out=False, raw_event_id="r2")
    assert first.event_id == again.event_id


def test_a_citizen_known_only_by_user_id_is_handed_off_by_that_id() -> None:
    message = dataclasses.replace(inbound(), sender=None, sender_user_id="KR.8812")
    event = handoff_event(message, ABUSE, language="ko", opted_out=False, raw_event_id="r")
    assert (event.payload["citizen"], event.payload["from"]) == ("KR.8812", None)
    assert event.payload["from_user_id"] == "KR.8812"


def test_other_intents_publish_only_the_message_event() -> None:
    events = routed_events(
        inbound(),
        VOTING,
        before=ContactState(),
        after=ContactState(),
        language="ko",
        raw_event_id="r",
    )
    assert [e.kind for e in events] == ["message.voting"]
    assert events[0].payload["handoff"] is None


def test_the_first_stop_is_answered_a_repeated_one_is_not() -> None:
    stop = Route("opt_out", urgent=False, needs_reply=True)
    opted_out = ContactState(opted_out=True, opted_out_at=T0)
    (first,) = routed_events(
        inbound("STOP"),
        stop,
        before=ContactState(),
        after=opted_out,
        language="en",
        raw_event_id="r",
    )
    (again,) = routed_events(
        inbound("STOP"), stop, before=opted_out, after=opted_out, language="en", raw_event_id="r"
    )
    assert first.payload["needs_reply"] is True
    assert again.payload["needs_reply"] is False
    assert again.payload["opted_out"] is True
    assert again.kind == "message.opt_out"
