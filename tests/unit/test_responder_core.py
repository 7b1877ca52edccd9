"""Whether and what the responder answers: pure decisions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from civicline.responder.catalog import load_catalog
from civicline.responder.core import (
    InboundRef,
    NoReply,
    Send,
    Suppress,
    decide,
    in_doubt_event,
    sent_event,
)

CATALOG = load_catalog()


def ref(**overrides: Any) -> InboundRef:
    payload: dict[str, Any] = {
        "wamid": "wamid.IN",
        "phone_number_id": "106512349876543",
        "from": "821052347781",
        "intent": "voting",
        "language": "ko",
        "needs_reply": True,
        "opted_out": False,
        **overrides,
    }
    return InboundRef.from_payload(payload)


def test_a_question_gets_the_catalog_reply_in_context_to_the_citizen() -> None:
    decision = decide(ref(), CATALOG)
    assert isinstance(decision, Send)
    assert decision.reply.language == "ko"
    assert decision.message["to"] == "821052347781"
    assert decision.message["context"] == {"message_id": "wamid.IN"}
    assert decision.message["text"]["body"] == decision.reply.body


def test_reactions_get_no_reply() -> None:
    assert isinstance(decide(ref(intent="reaction", needs_reply=False), CATALOG), NoReply)


def test_an_opted_out_citizen_gets_only_the_confirmations() -> None:
    assert decide(ref(opted_out=True), CATALOG) == Suppress("opted_out")
    assert isinstance(decide(ref(opted_out=True, intent="opt_out"), CATALOG), Send)
    assert isinstance(decide(ref(opted_out=True, intent="opt_in"), CATALOG), Send)


def test_a_business_scoped_user_id_is_a_valid_recipient() -> None:
    inbound = InboundRef.from_payload(
        {
            "wamid": "w",
            "phone_number_id": "p",
            "from": None,
            "from_user_id": "US.1349",
            "intent": "help",
            "language": "en",
        }
    )
    assert inbound.recipient == "US.1349"


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


def test_outcome_events_have_ids_per_kind_and_inbound_message() -> None:
    inbound = ref()
    decision = decide(inbound, CATALOG)
    assert isinstance(decision, Send)
    now = datetime.now(UTC)
    sent = sent_event(inbound, decision, "wamid.OUT", now)
    assert sent.event_id == sent_event(inbound, decision, "wamid.OUT", now).event_id
    assert sent.event_id != in_doubt_event(inbound, now).event_id
    assert sent.payload["wamid"] == "wamid.OUT"
    assert sent.correlation_id == "wamid.IN"
