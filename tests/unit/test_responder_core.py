"""Whether and what the responder answers: pure decisions, no I/O."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civicline.common.envelope import Envelope
from civicline.responder.catalog import Catalog, Place, choose_reply, load_catalog
from civicline.responder.core import (
    Away,
    InboundRef,
    NoReply,
    Send,
    Suppress,
    away_event,
    decide,
    haversine_km,
    in_doubt_event,
    nearest,
    sent_event,
    window_closed_fallback,
    within_window,
)

CATALOG = load_catalog()
# Monday 20 July 2026: 10:00 in Seoul (office open) and 22:00 in Seoul (closed).
OPEN = datetime(2026, 7, 20, 1, 0, tzinfo=UTC)
CLOSED = datetime(2026, 7, 20, 13, 0, tzinfo=UTC)
SEOUL_CITY_HALL = (37.5663, 126.9779)
GANGNAM_STATION = (37.4979, 127.0276)


def ref(**overrides: Any) -> InboundRef:
    payload: dict[str, Any] = {
        "wamid": "wamid.IN",
        "phone_number_id": "106512349876543",
        "from": "821052347781",
        "intent": "voting",
        "language": "ko",
        "needs_reply": True,
        "opted_out": False,
        "timestamp": (OPEN - timedelta(seconds=2)).isoformat(),
        **overrides,
    }
    return InboundRef.from_payload(payload)


def sent(inbound: InboundRef, *, now: datetime = OPEN, catalog: Catalog = CATALOG) -> Send:
    decision = decide(inbound, catalog, now=now)
    assert isinstance(decision, Send), decision
    return decision


def test_a_question_gets_the_catalog_reply_in_context_to_the_citizen() -> None:
    decision = sent(ref())
    assert decision.reply.language == "ko"
    assert decision.message["to"] == "821052347781"
    assert decision.message["context"] == {"message_id": "wamid.IN"}
    assert decision.message["text"]["body"] == decision.reply.body
    assert decision.away is None


def test_decide_defaults_now_to_the_current_time() -> None:
    just_now = datetime.now(UTC).isoformat()
    assert isinstance(decide(ref(timestamp=just_now), CATALOG), Send)
    decision = decide(ref(timestamp="2020-01-01T00:00:00+00:00"), CATALOG)
    assert isinstance(decision, Send)
    assert decision.message["type"] == "template"


def test_reactions_get_no_reply() -> None:
    assert isinstance(decide(ref(intent="reaction", needs_reply=False), CATALOG), NoReply)
    assert isinstance(decide(ref(intent="reaction"), CATALOG), NoReply)


def test_a_message_the_router_says_needs_no_reply_gets_none() -> None:
    # e.g. a second STOP from a citizen who already opted out
    assert isinstance(decide(ref(intent="opt_out", needs_reply=False), CATALOG), NoReply)


def test_an_opted_out_citizen_gets_only_the_confirmations() -> None:
    assert decide(ref(opted_out=True), CATALOG, now=OPEN) == Suppress("opted_out")
    assert decide(ref(opted_out=True, intent="report_abuse"), CATALOG) == Suppress("opted_out")
    # The router's event carries the state after the message: opted out after STOP, not after
    # START (a START is the opted-out citizen's message that ends it).
    for intent, after in (("opt_out", True), ("opt_in", False)):
        decision = sent(ref(opted_out=after, intent=intent), now=CLOSED)
        assert decision.reply.intent == intent
        assert decision.away is None  # the confirmation stays the only message


@pytest.mark.parametrize(
    ("intent", "topic", "after"),
    [("opt_out", None, False), ("opt_in", None, True), ("subscribe", "election", True)],
)
def test_a_consent_message_older_than_the_citizens_latest_is_not_confirmed(
    intent: str, topic: str | None, after: bool
) -> None:
    # The router left the citizen's state as their newer word set it (the opposite of this
    # message's): "you will receive messages" after a later STOP would be false.
    decision = decide(ref(intent=intent, topic=topic, opted_out=after), CATALOG, now=OPEN)
    assert decision == Suppress("superseded")


def test_an_opted_out_citizen_asking_for_the_topic_list_still_gets_it() -> None:
    # A subscribe naming no topic changes no consent: it is answered with the list.
    assert isinstance(decide(ref(intent="subscribe", opted_out=True), CATALOG, now=OPEN), Send)


# --- the 24-hour window -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "inside"),
    [
        (timedelta(0), True),
        (timedelta(hours=23, minutes=59, seconds=59), True),
        (timedelta(hours=24), False),
        (timedelta(days=6), False),
        (-timedelta(minutes=5), True),  # the citizen's clock is ahead of ours
    ],
)
def test_within_window(age: timedelta, inside: bool) -> None:
    assert within_window(OPEN - age, OPEN) is inside
    assert within_window(None, OPEN) is True


@pytest.mark.parametrize("language", ["ko", "ja", "en"])
def test_outside_the_window_the_intents_template_goes_instead(language: str) -> None:
    old = ref(language=language, timestamp=(OPEN - timedelta(hours=25)).isoformat())
    decision = sent(old, now=OPEN)
    template = CATALOG.templates["voting"][language].template
    assert template is not None
    assert decision.reply.type == "template"
    assert decision.message == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "821052347781",
        "type": "template",
        "template": {
            "name": template.name,
            "language": {"code": template.language},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": template.parameters[0]}]}
            ],
        },
        "context": {"message_id": "wamid.IN"},
    }


def test_outside_the_window_there_is_no_away_notice_and_opted_out_still_suppressed() -> None:
    stale = (CLOSED - timedelta(days=2)).isoformat()
    decision = sent(ref(timestamp=stale), now=CLOSED)
    assert decision.reply.type == "template"
    assert decision.away is None
    assert decide(ref(timestamp=stale, opted_out=True), CATALOG, now=CLOSED) == Suppress(
        "opted_out"
    )


def test_just_inside_the_window_the_reply_is_free_form() -> None:
    recent = (OPEN - timedelta(hours=23, minutes=59)).isoformat()
    assert sent(ref(timestamp=recent)).message["type"] == "text"


@pytest.mark.parametrize("timestamp", [None, "yesterday", 1784361600, "2026-07-20T00:59:58"])
def test_an_unreadable_timestamp_counts_as_just_arrived(timestamp: object) -> None:
    inbound = ref(timestamp=timestamp)
    if timestamp == "2026-07-20T00:59:58":
        assert inbound.timestamp == datetime(2026, 7, 20, 0, 59, 58, tzinfo=UTC)
    else:
        assert inbound.timestamp is None
    assert sent(inbound).message["type"] == "text"


def test_the_router_payload_timestamp_is_read() -> None:
    # The router's envelope is orjson with OPT_UTC_Z: "2026-07-20T00:59:58Z".
    assert ref(timestamp="2026-07-20T00:59:58Z").timestamp == datetime(
        2026, 7, 20, 0, 59, 58, tzinfo=UTC
    )


# --- the nearest shelter ----------------------------------------------------------------------


def test_haversine_known_distances() -> None:
    assert haversine_km(SEOUL_CITY_HALL, SEOUL_CITY_HALL) == 0
    seoul_tokyo = haversine_km((37.5665, 126.9780), (35.6762, 139.6503))
    assert 1140 < seoul_tokyo < 1160  # about 1,150 km
    # a quarter of the equator
    assert haversine_km((0, 0), (0, 90)) == pytest.approx(math.pi / 2 * 6371.0088)
    # across the antimeridian: Fiji to Samoa is close, not around the world
    assert haversine_km((-18.1, 178.4), (-13.8, -171.8)) < 1200


coordinates = st.tuples(
    st.floats(min_value=-90, max_value=90), st.floats(min_value=-180, max_value=180)
)


@given(a=coordinates, b=coordinates)
def test_haversine_is_a_symmetric_bounded_distance(
    a: tuple[float, float], b: tuple[float, float]
) -> None:
    distance = haversine_km(a, b)
    assert distance == pytest.approx(haversine_km(b, a), abs=1e-6)
    assert 0 <= distance <= math.pi * 6371.0088 + 1e-6


def test_nearest_picks_by_great_circle_and_keeps_catalog_order_on_ties() -> None:
    places = (Place(37.573, 126.9794, "Jongno"), Place(37.5172, 127.0473, "Gangnam"))
    assert nearest(places, SEOUL_CITY_HALL).name == "Jongno"
    assert nearest(places, GANGNAM_STATION).name == "Gangnam"
    twins = (Place(1, 1, "first"), Place(1, 1, "second"))
    assert nearest(twins, (0, 0)).name == "first"
    with pytest.raises(ValueError, match="no places"):
        nearest((), (0, 0))


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        (SEOUL_CITY_HALL, 0),  # Jongno
        ((37.5563, 126.9220), 1),  # Hongdae: Mapo
        (GANGNAM_STATION, 2),  # Gangnam
        ((37.5113, 127.0980), 3),  # Jamsil: Songpa
    ],
)
@pytest.mark.parametrize("language", ["ko", "ja", "en"])
def test_a_shared_location_gets_the_nearest_shelter_pin(
    position: tuple[float, float], expected: int, language: str
) -> None:
    inbound = ref(
        intent="shelter",
        language=language,
        type="location",
        content={"latitude": position[0], "longitude": position[1]},
    )
    decision = sent(inbound)
    place = CATALOG.replies["shelter"][language].places[expected]
    assert decision.message["type"] == "location"
    assert decision.message["location"] == {
        "latitude": place.latitude,
        "longitude": place.longitude,
        "name": place.name,
        "address": place.address,
    }
    assert decision.message["context"] == {"message_id": "wamid.IN"}


def test_a_shelter_question_in_words_gets_the_text_that_asks_for_a_location() -> None:
    decision = sent(ref(intent="shelter", language="en", text="where is the shelter"))
    assert decision.message["type"] == "text"
    assert decision.message["text"]["body"] == choose_reply(CATALOG, "shelter", "en").body
    assert "Share your location" in decision.message["text"]["body"]


@pytest.mark.parametrize(
    "content",
    [
        {"latitude": "37.5", "longitude": 127.0},
        {"latitude": 91, "longitude": 127.0},
        {"latitude": True, "longitude": 127.0},
        {"latitude": float("nan"), "longitude": 127.0},
        {"longitude": 127.0},
        "not an object",
    ],
)
def test_a_malformed_location_is_treated_as_none(content: object) -> None:
    inbound = ref(intent="shelter", type="location", content=content)
    assert inbound.location is None
    assert sent(inbound).message["type"] == "text"


def test_coordinates_outside_a_location_message_are_ignored() -> None:
    inbound = ref(intent="shelter", type="text", content={"latitude": 37.5, "longitude": 127.0})
    assert inbound.location is None


# --- business-scoped user ids -----------------------------------------------------------------


def test_a_citizen_with_only_a_business_scoped_user_id_is_answered_by_recipient() -> None:
    inbound = ref(**{"from": None, "from_user_id": "US.13491208655302741918"})
    assert inbound.recipient == "US.13491208655302741918"
    assert inbound.by_user_id
    message = sent(inbound, now=CLOSED).message
    assert message["recipient"] == "US.13491208655302741918"
    assert "to" not in message
    away = sent(inbound, now=CLOSED).away
    assert away is not None
    assert away.message["recipient"] == "US.13491208655302741918"


def test_a_phone_number_wins_over_a_user_id() -> None:
    inbound = ref(from_user_id="US.1349")
    assert (inbound.recipient, inbound.by_user_id) == ("821052347781", False)
    assert sent(inbound).message["to"] == "821052347781"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"wamid": "w", "phone_number_id": "p", "intent": "help", "language": "en"},
        {"wamid": 1, "phone_number_id": "p", "from": "1", "intent": "help", "language": "en"},
    ],
)
def test_a_payload_of_the_wrong_shape_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError)):
        InboundRef.from_payload(payload)


# --- office hours and the away notice ---------------------------------------------------------


@pytest.mark.parametrize("language", ["ko", "ja", "en"])
def test_outside_office_hours_the_answer_is_followed_by_the_away_notice(language: str) -> None:
    decision = sent(ref(language=language, timestamp=CLOSED.isoformat()), now=CLOSED)
    assert decision.reply.intent == "voting"
    assert decision.message["context"] == {"message_id": "wamid.IN"}
    assert decision.away is not None
    assert decision.away.reply.language == language
    assert decision.away.message == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "821052347781",
        "type": "text",
        "text": {"body": decision.away.reply.body, "preview_url": False},
    }


def test_inside_office_hours_there_is_no_away_notice() -> None:
    assert sent(ref()).away is None


@pytest.mark.parametrize("intent", ["report_abuse", "office_hours", "opt_out", "opt_in"])
def test_no_away_notice_after_urgent_confirmation_or_office_hours_answers(intent: str) -> None:
    after = ref(intent=intent, timestamp=CLOSED.isoformat(), opted_out=intent == "opt_out")
    decision = sent(after, now=CLOSED)
    assert decision.reply.intent == intent
    assert decision.away is None


def test_an_urgent_message_gets_its_reply_and_no_away_notice_whatever_its_intent() -> None:
    decision = sent(ref(urgent=True, timestamp=CLOSED.isoformat()), now=CLOSED)
    assert decision.away is None


def test_a_catalog_without_office_hours_never_sends_an_away_notice(tmp_path: Path) -> None:
    text = Path(CATALOG.source).read_text(encoding="utf-8")
    path = tmp_path / "catalog.toml"
    path.write_text(text[: text.index("# --- office hours")], encoding="utf-8")
    catalog = load_catalog(path)
    assert sent(ref(timestamp=CLOSED.isoformat()), now=CLOSED, catalog=catalog).away is None


# --- events -----------------------------------------------------------------------------------


def test_outcome_events_have_ids_per_kind_and_inbound_message() -> None:
    inbound = ref()
    decision = sent(inbound)
    now = datetime.now(UTC)
    event = sent_event(inbound, decision, "wamid.OUT", now)
    assert event.event_id == sent_event(inbound, decision, "wamid.OUT", now).event_id
    assert event.event_id != in_doubt_event(inbound, now).event_id
    assert event.payload["wamid"] == "wamid.OUT"
    assert event.correlation_id == "wamid.IN"


def test_away_events_are_their_own_unit_of_work() -> None:
    inbound = ref(timestamp=CLOSED.isoformat())
    decision = sent(inbound, now=CLOSED)
    assert isinstance(decision.away, Away)
    event = away_event("outbound.sent", inbound, decision.away, CLOSED, {"wamid": "wamid.AWAY"})
    reply_event = sent_event(inbound, decision, "wamid.OUT", CLOSED)
    assert event.event_id != reply_event.event_id
    assert event.correlation_id == "away:wamid.IN"
    assert event.payload["purpose"] == "away"
    assert event.payload["in_reply_to"] == "wamid.IN"
    assert event.payload["message"] == decision.away.message
    assert event.payload["wamid"] == "wamid.AWAY"
    decoded = Envelope.decode(event.encode())
    assert decoded.event_id == event.event_id


def test_a_free_form_reply_meta_refused_as_out_of_window_falls_back_to_the_template() -> None:
    inbound = ref(intent="voting", language="en")
    decision = sent(inbound, now=CLOSED)
    assert decision.reply.type != "template"
    fallback = window_closed_fallback(inbound, decision, CATALOG)
    assert fallback is not None
    assert fallback.message["type"] == "template"
    assert fallback.message["context"] == {"message_id": "wamid.IN"}
    assert fallback.away is None
    # A template refused: nothing else to fall back to.
    assert window_closed_fallback(inbound, fallback, CATALOG) is None
