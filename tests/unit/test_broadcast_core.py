"""Subscriptions and broadcast campaigns, the pure parts: topics, classification of
(un)subscribe messages, the confirmation and topic list, the campaign spec and state machine,
expansion chunking, the messaging tier, the replies' reserved share, progress."""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from civicline.common.topics import TopicsError, load_topics
from civicline.responder.api import operator_of
from civicline.responder.broadcasts import Batcher
from civicline.responder.campaigns import (
    Cursor,
    SpecError,
    TransitionError,
    admit,
    advance,
    broadcast_rate,
    chunks,
    next_delivery_state,
    parse_recipient_list,
    parse_spec,
    summarise,
    template_language,
    template_message,
    transition,
)
from civicline.responder.catalog import load_catalog
from civicline.responder.core import InboundRef, Send, decide
from civicline.router.core import InboundMessage
from civicline.router.events import ContactState, apply_message
from civicline.router.rules import classify, load_rules

TOPICS = load_topics()
RULES = load_rules()
CATALOG = load_catalog()


def spec_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "name": "Flood warning",
        "phone_number_id": "106512349876543",
        "template": {
            "name": "flood_warning",
            "languages": {"ko": "ko", "en": "en_US", "ja": "ja"},
            "fallback": "en_US",
            "parameters": ["Mapo-gu", "18:00"],
        },
        "audience": {"topics": ["flood-seoul-mapo"]},
    }
    document.update(changes)
    return document


# --- topics and classification ----------------------------------------------------------------


def test_packaged_topics_have_titles_and_find_keywords_in_three_languages() -> None:
    assert TOPICS.find("FLOOD") == TOPICS.find("홍수") == TOPICS.find("洪水") == "flood-seoul-mapo"
    assert TOPICS.find("flood-seoul-mapo") == "flood-seoul-mapo"
    assert TOPICS.find("weather") is None
    assert TOPICS.title("election", "ko-KR") == "선거 안내"
    assert TOPICS.title("election", "fr") == "Election updates"  # the default language


def test_topics_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(
        'version = 1\ndefault_language = "en"\n[topics.a]\nkeywords = ["x"]\n'
        '[topics.a.title]\nko = "가"\n[menu.en]\nbody = "b"\nbutton = "c"\n',
        encoding="utf-8",
    )
    with pytest.raises(TopicsError, match=r"topics\.a\.title\.en"):
        load_topics(path)
    path.write_text(
        'version = 1\ndefault_language = "en"\n[topics.a]\nkeywords = ["x"]\n'
        '[topics.a.title]\nen = "A"\n[topics.b]\nkeywords = ["X"]\n[topics.b.title]\n'
        'en = "B"\n[menu.en]\nbody = "b"\nbutton = "c"\n',
        encoding="utf-8",
    )
    with pytest.raises(TopicsError, match="already names topic 'a'"):
        load_topics(path)


def text_message(text: str, reply_id: str | None = None) -> InboundMessage:
    return InboundMessage(
        wamid="wamid.1",
        phone_number_id="106512349876543",
        display_phone_number="15550100200",
        waba_id="1",
        sender="821012345678",
        sender_user_id=None,
        profile_name=None,
        timestamp=datetime.now(UTC),
        type="interactive" if reply_id else "text",
        text=text,
        reply_id=reply_id,
        context_id=None,
        content={},
        errors=(),
    )


@pytest.mark.parametrize(
    ("text", "intent", "topic"),
    [
        ("SUBSCRIBE FLOOD", "subscribe", "flood-seoul-mapo"),
        ("Subscribe flood!", "subscribe", "flood-seoul-mapo"),
        ("홍수 알림", "subscribe", "flood-seoul-mapo"),
        ("선거 구독", "subscribe", "election"),
        ("洪水 登録", "subscribe", "flood-seoul-mapo"),
        ("unsubscribe election", "unsubscribe", "election"),
        ("선거 구독 취소", "unsubscribe", "election"),
        ("ワクチン 登録解除", "unsubscribe", "vaccination"),
        ("sub", "subscribe", None),
        ("unsub", "unsubscribe", None),
    ],
)
def test_subscription_messages(text: str, intent: str, topic: str | None) -> None:
    route = classify(text_message(text), RULES)
    assert (route.intent, route.topic) == (intent, topic)


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("subscribe", "opt_in"),  # a whole-message opt word wins, as before
        ("unsubscribe", "opt_out"),
        ("STOP", "opt_out"),
        ("follow up on my passport", "passport"),
        ("투표소 위치 알려주세요", "voting"),
    ],
)
def test_other_messages_are_not_subscriptions(text: str, intent: str) -> None:
    assert classify(text_message(text), RULES).intent == intent


def test_a_tap_on_the_topic_list() -> None:
    route = classify(text_message("Election updates", reply_id="sub:election"), RULES)
    assert (route.intent, route.topic) == ("subscribe", "election")
    route = classify(text_message("Flood", reply_id="unsub:flood-seoul-mapo"), RULES)
    assert (route.intent, route.topic) == ("unsubscribe", "flood-seoul-mapo")
    route = classify(text_message("?", reply_id="sub:no-such-topic"), RULES)
    assert (route.intent, route.topic) == ("subscribe", None)


def inbound(intent: str, language: str, topic: str | None) -> InboundRef:
    return InboundRef(
        wamid="wamid.in",
        phone_number_id="106512349876543",
        recipient="821012345678",
        intent=intent,
        language=language,
        needs_reply=True,
        opted_out=False,
        topic=topic,
    )


def test_confirmation_names_the_topic_in_the_citizens_language() -> None:
    decision = decide(inbound("subscribe", "ko", "flood-seoul-mapo"), CATALOG, topics=TOPICS)
    assert isinstance(decision, Send)
    body = decision.message["text"]["body"]
    assert "홍수 경보: 마포구" in body
    assert "{topic}" not in body
    assert decision.away is None
    decision = decide(inbound("unsubscribe", "ja", "election"), CATALOG, topics=TOPICS)
    assert isinstance(decision, Send)
    assert "選挙のお知らせ" in decision.message["text"]["body"]


def test_without_a_topic_the_citizen_gets_the_topic_list() -> None:
    decision = decide(inbound("subscribe", "en", None), CATALOG, topics=TOPICS)
    assert isinstance(decision, Send)
    interactive = decision.message["interactive"]
    assert interactive["type"] == "list"
    rows = interactive["action"]["sections"][0]["rows"]
    assert [row["id"] for row in rows] == [f"sub:{name}" for name in TOPICS.topics]
    assert rows[0]["title"] == "Flood alerts: Mapo"
    unsubscribe = decide(inbound("unsubscribe", "ko", None), CATALOG, topics=TOPICS)
    assert isinstance(unsubscribe, Send)
    rows = unsubscribe.message["interactive"]["action"]["sections"][0]["rows"]
    assert rows[1] == {
        "id": "unsub:election",
        "title": "선거 안내",
        "description": "투표소 운영 시간과 선거일 알림",
    }


def test_an_opted_out_citizen_still_gets_the_confirmation() -> None:
    # Withdrawing a topic leaves the opt-out as it is; subscribing to one ends it (so the
    # router's event then says opted_out False, and one that still says True is superseded).
    opted_out = replace(inbound("unsubscribe", "en", "election"), opted_out=True)
    assert isinstance(decide(opted_out, CATALOG, topics=TOPICS), Send)


# --- the campaign spec --------------------------------------------------------------------------


def test_a_valid_spec() -> None:
    spec = parse_spec(spec_document(send_at="2026-11-27T09:00:00+09:00"), TOPICS)
    assert spec.topics == ("flood-seoul-mapo",)
    assert spec.parameters == {"*": ("Mapo-gu", "18:00")}
    assert spec.send_at is not None
    assert spec.sources == 1
    assert parse_spec(spec.as_json(), TOPICS) == spec


def test_an_invalid_spec_lists_every_problem() -> None:
    document = spec_document(
        phone_number_id="abc",
        audience={"topics": ["weather"]},
        send_at="tomorrow",
        colour="red",
    )
    with pytest.raises(SpecError) as caught:
        parse_spec(document, TOPICS)
    message = str(caught.value)
    for part in ("phone_number_id", "unknown topic 'weather'", "send_at", "colour"):
        assert part in message


def test_parameters_per_language_must_cover_every_language() -> None:
    template = {
        "name": "flood_warning",
        "languages": {"ko": "ko", "en": "en_US"},
        "fallback": "en_US",
        "parameters": {"ko": ["마포구"]},
    }
    with pytest.raises(SpecError, match="none for language 'en_US'"):
        parse_spec(spec_document(template=template), TOPICS)


def test_each_citizen_gets_their_language_or_the_fallback() -> None:
    spec = parse_spec(spec_document(), TOPICS)
    assert template_language(spec, "ko") == "ko"
    assert template_language(spec, "en-GB") == "en_US"
    assert template_language(spec, "fr") == "en_US"
    assert template_language(spec, None) == "en_US"
    campaign_id = uuid.UUID("0b6d8f0e-3f39-4c1e-9a55-1f3a2c7e9d10")
    message = template_message(campaign_id, spec, "821012345678", "ko")
    assert message["to"] == "821012345678"
    # Meta repeats it in the message's statuses: they are routed to the responder by it
    assert message["biz_opaque_callback_data"] == f"civicline.campaign:{campaign_id}"
    assert len(message["biz_opaque_callback_data"]) <= 512
    assert message["template"] == {
        "name": "flood_warning",
        "language": {"code": "ko"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Mapo-gu"},
                    {"type": "text", "text": "18:00"},
                ],
            }
        ],
    }


def test_recipient_lists() -> None:
    lines = ["wa_id,language", "+82 10-1234-5678,ko", "", "# a comment", "819012345678"]
    assert list(parse_recipient_list(lines)) == [("821012345678", "ko"), ("819012345678", None)]
    with pytest.raises(SpecError, match="line 2"):
        list(parse_recipient_list(["821012345678", "not a number"]))


# --- states -------------------------------------------------------------------------------------


def test_campaign_state_machine() -> None:
    assert transition("draft", "schedule") == "scheduled"
    assert transition("scheduled", "start") == "running"
    assert transition("running", "pause") == "paused"
    assert transition("paused", "resume") == "running"
    assert transition("paused", "resume", started=False) == "scheduled"
    assert transition("running", "complete") == "completed"
    for state in ("draft", "scheduled", "running", "paused"):
        assert transition(state, "cancel") == "cancelled"
    for state, action in [
        ("completed", "cancel"),
        ("cancelled", "resume"),
        ("draft", "pause"),
        ("running", "resume"),
        ("paused", "complete"),
    ]:
        with pytest.raises(TransitionError):
            transition(state, action)
    with pytest.raises(TransitionError, match="unknown action"):
        transition("draft", "explode")


def test_delivery_states_only_move_forward() -> None:
    assert next_delivery_state("sent", "delivered") == "delivered"
    assert next_delivery_state("delivered", "read") == "read"
    assert next_delivery_state("sent", "read") == "read"  # delivered came late or never
    assert next_delivery_state("read", "delivered") is None
    assert next_delivery_state("sent", "sent") is None
    assert next_delivery_state("delivered", "failed") == "failed"
    assert next_delivery_state("queued", "delivered") is None
    assert next_delivery_state("failed", "read") is None


# --- expansion, tier, priority ------------------------------------------------------------------


def test_chunks() -> None:
    assert [list(c) for c in chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []
    with pytest.raises(ValueError, match="positive"):
        list(chunks([1], 0))


def test_expansion_walks_each_source_then_stops() -> None:
    cursor = Cursor()
    cursor = advance(cursor, ["a", "b", "c"], 3, sources=2)
    assert cursor == Cursor(0, "c")
    cursor = advance(cursor, ["d"], 3, sources=2)  # a short page: the topic is exhausted
    assert cursor == Cursor(1, "", done=False)
    cursor = advance(cursor, [], 3, sources=2)
    assert cursor.done
    assert advance(Cursor(), [], 3, sources=1).done


def test_messaging_tier_counts_unique_citizens() -> None:
    admitted, deferred = admit(["a", "b", "c", "d"], ["b"], used=8, tier=10)
    # b was reached within 24 h and does not count again; two new ones fit.
    assert admitted == ["a", "b", "c"]
    assert deferred == ["d"]
    assert admit(["a", "a"], [], used=9, tier=10) == (["a", "a"], [])
    assert admit(["a"], [], used=12, tier=10) == ([], ["a"])
    assert admit(["a", "b"], [], used=10**9, tier=None) == (["a", "b"], [])


def test_replies_keep_their_share_of_the_rate() -> None:
    assert broadcast_rate(1000, 0.2) == pytest.approx(800)
    assert broadcast_rate(80, 0.0) == 80


def test_progress_counts_every_recipient_once() -> None:
    progress = summarise(
        [
            ("queued", None, None, 5),
            ("claimed", None, None, 1),
            ("sending", None, None, 1),
            ("sent", None, None, 10),
            ("delivered", None, None, 4),
            ("read", None, None, 3),
            ("failed", None, 131026, 2),
            ("failed", "after_sent", 131000, 1),
            ("skipped", "opted_out", None, 6),
            ("in_doubt", None, None, 1),
            ("cancelled", None, None, 7),
        ]
    )
    assert progress.total == 41
    assert progress.sending == 2  # claimed by a sender, or being sent
    assert (progress.sent, progress.delivered, progress.read) == (18, 7, 3)
    assert progress.failed == {"131026": 2, "131000": 1}
    assert progress.skipped == {"opted_out": 6}
    assert progress.as_json()["failed_total"] == 3


# --- I/O helpers without I/O --------------------------------------------------------------------


def test_operator_tokens() -> None:
    tokens = ["first-token", "second-token"]
    assert operator_of(tokens, "second-token") is not None
    assert operator_of(tokens, "first-token") != operator_of(tokens, "second-token")
    assert operator_of(tokens, "wrong") is None
    assert operator_of(tokens, "first-token ") is None
    assert operator_of([], "first-token") is None
    assert operator_of(tokens, "ëé") is None  # non-ASCII must not raise


async def test_batcher_groups_concurrent_writes_per_key() -> None:
    calls: list[tuple[str, list[int]]] = []

    async def flush(key: str, items: list[int]) -> list[int]:
        calls.append((key, items))
        return [item * 10 for item in items]

    batcher: Batcher[str, int, int] = Batcher(flush, max_items=3)
    results = await asyncio.gather(
        *(batcher.submit("a", i) for i in range(5)), batcher.submit("b", 9)
    )
    assert results == [0, 10, 20, 30, 40, 90]
    assert sorted(len(items) for _, items in calls) == [1, 2, 3]


async def test_batcher_passes_a_failure_to_every_caller() -> None:
    async def flush(key: str, items: list[int]) -> list[int]:
        raise ConnectionError("down")

    batcher: Batcher[str, int, int] = Batcher(flush)
    results = await asyncio.gather(
        batcher.submit("a", 1), batcher.submit("a", 2), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)


def test_campaign_ids_are_uuids() -> None:
    assert uuid.UUID(str(uuid.uuid4()))


def test_subscribing_to_a_topic_is_an_opt_in_and_stop_is_not_undone_by_a_bare_word() -> None:
    stopped = ContactState(opted_out=True, opted_out_at=datetime.now(UTC))
    message = text_message("SUBSCRIBE FLOOD")
    route = classify(message, RULES)
    assert not apply_message(stopped, message, route, "en").opted_out
    bare = text_message("sub")
    assert apply_message(stopped, bare, classify(bare, RULES), "en").opted_out


def test_the_readmes_example_spec_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "flood-warning.toml"
    spec = parse_spec(tomllib.loads(example.read_text(encoding="utf-8")), TOPICS)
    assert spec.topics == ("flood-seoul-mapo",)
    assert template_language(spec, "ja") == "ja"
