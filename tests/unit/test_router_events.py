"""What the router publishes for a parsed message: ids, routing keys, contact state."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from civicline.common.envelope import Envelope
from civicline.router.core import DeliveryStatus, InboundMessage, Route
from civicline.router.events import (
    ContactState,
    apply_message,
    message_event,
    status_event,
)

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
