"""The router routes webhooks in batches: a batch must decide exactly what routing each webhook
alone, in arrival order, would have decided."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from civicline.router.batch import (
    ContactKey,
    Delivered,
    contacts_needed,
    dedup_keys,
    plan_batch,
)
from civicline.router.core import parse_webhook
from civicline.router.events import ContactState
from civicline.router.rules import Rules, load_rules
from civicline.simulator.webhooks import (
    DEFAULT_PHONE_NUMBER_ID,
    status_webhook,
    text_message_webhook,
)

RECEIVED = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
NUMBER = DEFAULT_PHONE_NUMBER_ID


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


def delivered(body: bytes, raw_event_id: str) -> Delivered:
    parsed = parse_webhook(orjson.loads(body), received_at=RECEIVED)
    return Delivered(parsed, raw_event_id, RECEIVED)


def text(wa_id: str, words: str, wamid: str, at: int) -> Delivered:
    body, _ = text_message_webhook(wa_id=wa_id, text=words, wamid=wamid, timestamp=at)
    return delivered(body, f"raw-{wamid}")


def status(wamid: str, state: str, to: str) -> Delivered:
    return delivered(status_webhook(wamid=wamid, status=state, recipient_id=to), f"raw-{state}")


def one_by_one(
    batch: list[Delivered], rules: Rules
) -> tuple[list[str], dict[ContactKey, ContactState]]:
    """What the router did before batches: each webhook alone, its own claims and contacts."""
    seen: set[str] = set()
    contacts: dict[ContactKey, ContactState] = {}
    kinds: list[str] = []
    for item in batch:
        keys = dedup_keys([item])
        unseen = {k for k in keys if k not in seen}
        seen |= unseen
        plan = plan_batch([item], unseen, contacts, rules)
        contacts |= plan.contacts
        kinds += [f"{e.kind}:{e.event_id}" for e in plan.events]
    return kinds, contacts


def sample_batch() -> list[Delivered]:
    return [
        text("821011112222", "투표소 위치 알려주세요", "wamid.K1", 1_790_000_000),
        status("wamid.R1", "sent", "821011112222"),
        text("819011112222", "避難所はどこですか", "wamid.J1", 1_790_000_001),
        text("821011112222", "중지", "wamid.K2", 1_790_000_002),
        status("wamid.R1", "delivered", "821011112222"),
        text("821011112222", "여권 갱신", "wamid.K3", 1_790_000_003),
        text("447700900321", "How do I renew my passport?", "wamid.E1", 1_790_000_004),
        status("wamid.R1", "read", "821011112222"),
    ]


def test_a_batch_decides_what_each_webhook_alone_would_have(rules: Rules) -> None:
    batch = sample_batch()
    unseen = set(dedup_keys(batch))
    contacts = {key: ContactState() for key in contacts_needed(batch, unseen)}
    plan = plan_batch(batch, unseen, contacts, rules)

    kinds, expected_contacts = one_by_one(batch, rules)
    assert sorted(f"{e.kind}:{e.event_id}" for e in plan.events) == sorted(kinds)
    assert plan.contacts == expected_contacts
    assert plan.duplicates == 0
    # The Korean citizen said STOP in the middle: opted out, language Korean.
    korean = plan.contacts[(NUMBER, "821011112222")]
    assert korean.opted_out
    assert korean.language == "ko"


def test_one_citizens_events_share_a_lane_in_the_order_they_wrote(rules: Rules) -> None:
    batch = sample_batch()
    unseen = set(dedup_keys(batch))
    plan = plan_batch(batch, unseen, {}, rules)
    korean_lane = next(lane for lane in plan.lanes if lane[0].correlation_id == "wamid.K1")
    assert [e.correlation_id for e in korean_lane] == ["wamid.K1", "wamid.K2", "wamid.K3"]
    # Statuses need no order: each is its own lane, so their confirms overlap.
    status_lanes = [lane for lane in plan.lanes if lane[0].kind.startswith("status.")]
    assert [len(lane) for lane in status_lanes] == [1, 1, 1]


def test_a_webhook_redelivered_within_the_batch_is_routed_once(rules: Rules) -> None:
    first = text("821033334444", "대피소", "wamid.D1", 1_790_000_000)
    again = text("821033334444", "대피소", "wamid.D1", 1_790_000_000)
    receipt = status("wamid.R9", "delivered", "821033334444")
    batch = [first, receipt, again, receipt]
    plan = plan_batch(batch, set(dedup_keys(batch)), {}, rules)
    assert [e.correlation_id for e in plan.events if e.kind.startswith("message.")] == ["wamid.D1"]
    assert sum(1 for e in plan.events if e.kind.startswith("status.")) == 1
    assert plan.duplicates == 2


def test_keys_the_database_had_seen_give_no_events(rules: Rules) -> None:
    batch = sample_batch()
    keys = dedup_keys(batch)
    already = {"message:wamid.K1", "status:wamid.R1:sent"}
    unseen = set(keys) - already
    plan = plan_batch(batch, unseen, {}, rules)
    assert "wamid.K1" not in {e.correlation_id for e in plan.events}
    assert plan.duplicates == 2
    # Only new messages need their contact locked; the list is sorted (one lock order).
    needed = contacts_needed(batch, unseen)
    assert needed == sorted(needed)
    assert (NUMBER, "821011112222") in needed  # K2 and K3 are new
    only_seen = [text("821055556666", "투표", "wamid.S1", 1)]
    assert contacts_needed(only_seen, set()) == []


def test_a_contact_carries_its_stored_state_into_the_batch(rules: Rules) -> None:
    batch = [text("821077778888", "👍", "wamid.L1", 1_790_000_000)]
    stored = {(NUMBER, "821077778888"): ContactState(language="ja")}
    plan = plan_batch(batch, set(dedup_keys(batch)), stored, rules)
    # An emoji says nothing about language: the stored Japanese stays.
    assert plan.contacts[(NUMBER, "821077778888")].language == "ja"


def consent_after(
    order: list[Delivered], rules: Rules, *, batches: int
) -> tuple[ContactState, list[str], dict[str, bool]]:
    """Route `order` (in that arrival order) in one batch or one webhook per batch: the
    contact at the end, the wamids whose consent was recorded, and each message event's
    `opted_out`."""
    contacts: dict[ContactKey, ContactState] = {}
    recorded: list[str] = []
    opted_out: dict[str, bool] = {}
    for batch in [order] if batches == 1 else [[item] for item in order]:
        plan = plan_batch(batch, set(dedup_keys(batch)), contacts, rules)
        contacts.update(plan.contacts)
        recorded += [consent.wamid for consent in plan.consents]
        opted_out |= {
            e.payload["wamid"]: e.payload["opted_out"]
            for e in plan.events
            if e.kind.startswith("message.")
        }
    [contact] = contacts.values()
    return contact, recorded, opted_out


@pytest.mark.parametrize("batches", [1, 2])
def test_an_older_start_delivered_after_a_newer_stop_does_not_undo_it(
    rules: Rules, batches: int
) -> None:
    stop = text("821012340001", "STOP", "wamid.STOP", 1_790_000_200)
    start = text("821012340001", "START", "wamid.START", 1_790_000_100)
    contact, recorded, opted_out = consent_after([stop, start], rules, batches=batches)
    assert contact.opted_out
    assert contact.consent_changed_at == datetime.fromtimestamp(1_790_000_200, UTC)
    # The START's event says the citizen is still opted out, so it is not confirmed.
    assert opted_out == {"wamid.STOP": True, "wamid.START": True}
    assert recorded == ["wamid.STOP"]


@pytest.mark.parametrize("batches", [1, 2])
def test_an_older_stop_delivered_after_a_newer_subscription_withdraws_nothing(
    rules: Rules, batches: int
) -> None:
    subscribe = text("821012340002", "SUBSCRIBE ELECTION", "wamid.SUB", 1_790_000_200)
    stop = text("821012340002", "STOP", "wamid.STOP", 1_790_000_100)
    contact, recorded, opted_out = consent_after([subscribe, stop], rules, batches=batches)
    assert not contact.opted_out
    # The late STOP is still recorded, but withdraws only the subscriptions given before it
    # (record_consent), so the newer one stands.
    assert recorded == ["wamid.SUB", "wamid.STOP"]
    assert opted_out == {"wamid.SUB": False, "wamid.STOP": False}


@pytest.mark.parametrize("batches", [1, 2])
def test_an_older_subscription_delivered_after_a_newer_start_is_still_recorded(
    rules: Rules, batches: int
) -> None:
    start = text("821012340004", "START", "wamid.START", 1_790_000_101)
    subscribe = text("821012340004", "SUBSCRIBE ELECTION", "wamid.SUB", 1_790_000_100)
    contact, recorded, opted_out = consent_after([start, subscribe], rules, batches=batches)
    assert not contact.opted_out
    assert recorded == ["wamid.SUB"]  # confirmed, so it must be kept
    assert opted_out == {"wamid.START": False, "wamid.SUB": False}


def test_an_older_subscription_delivered_after_a_newer_stop_is_not_recorded(
    rules: Rules,
) -> None:
    stop = text("821012340005", "STOP", "wamid.STOP", 1_790_000_200)
    subscribe = text("821012340005", "SUBSCRIBE ELECTION", "wamid.SUB", 1_790_000_100)
    contact, recorded, opted_out = consent_after([stop, subscribe], rules, batches=2)
    assert contact.opted_out
    assert recorded == ["wamid.STOP"]
    assert opted_out["wamid.SUB"] is True  # so the responder does not confirm it


def test_consent_messages_in_order_each_take_effect(rules: Rules) -> None:
    start = text("821012340003", "START", "wamid.START", 1_790_000_100)
    stop = text("821012340003", "STOP", "wamid.STOP", 1_790_000_200)
    contact, recorded, _ = consent_after([start, stop], rules, batches=2)
    assert contact.opted_out
    assert recorded == ["wamid.STOP"]  # START records no topic consent of its own
    # Within one second (Meta's resolution) arrival order decides.
    again = text("821012340003", "START", "wamid.START2", 1_790_000_200)
    contact, _, _ = consent_after([start, stop, again], rules, batches=2)
    assert not contact.opted_out
