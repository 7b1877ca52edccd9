"""Conversations in Korean, Japanese and English for every seed service, end to end: signed
webhooks into ingress, the real router, responder and audit processes, and our Meta simulator
answering as the Graph API — which here enforces the 24-hour window like Meta (131047).

The responder runs with the packaged catalog whose office hours are emptied, so the office is
always closed and every first message of a conversation is followed by the away notice: the
outcome does not depend on the hour the suite runs at.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from civicline.responder.catalog import (
    Catalog,
    Place,
    Reply,
    choose_away,
    choose_reply,
    choose_template,
    load_catalog,
    to_graph_message,
)
from civicline.responder.pauses import PROBE_SECONDS
from civicline.simulator import (
    RecordedSend,
    Simulator,
    interactive_reply_webhook,
    location_message_webhook,
    message_webhook,
    send_webhook,
    text_message_webhook,
)
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TIMEOUT = 30.0
# Intents after which no away notice follows (see civicline.responder.core).
NO_AWAY = frozenset({"opt_out", "opt_in", "report_abuse", "office_hours"})
_numbers = itertools.count(1)


def new_citizen(country: str = "82") -> str:
    """A fresh wa_id per conversation, so no test shares a window, an opt-out or an away."""
    return f"{country}10{next(_numbers):08d}"


@pytest.fixture(scope="module")
def closed_office_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    packaged = Path(load_catalog().source).read_text(encoding="utf-8")
    start = packaged.index("[office.hours]")
    end = packaged.index("[office.away.en]")
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(packaged[:start] + "[office.hours]\n\n" + packaged[end:], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def catalog(closed_office_catalog: Path) -> Catalog:
    loaded = load_catalog(closed_office_catalog)
    assert loaded.office is not None
    assert not loaded.office.is_open(datetime.now(UTC))
    return loaded


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(enforce_window=True) as sim:
        yield sim


@pytest.fixture(scope="module")
async def pipeline(
    environments: EnvironmentFactory,
    simulator: Simulator,
    closed_office_catalog: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pipeline]:
    environment = await environments("conversations")
    running = Pipeline(environment, simulator.base_url, tmp_path_factory.mktemp("logs"))
    with pytest.MonkeyPatch.context() as patch:
        # Pipeline passes os.environ on to the services it starts.
        patch.setenv("RESPONDER_CATALOG_PATH", str(closed_office_catalog))
        async with running.started():
            yield running


@pytest.fixture(scope="module")
async def database(pipeline: Pipeline) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(pipeline.environment.database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Conversation:
    """One citizen talking to civicline; every message opens their window at the simulator,
    as a message to Meta does."""

    pipeline: Pipeline
    simulator: Simulator
    database: asyncpg.Pool
    citizen: str
    user_id: str | None = None

    @property
    def address(self) -> str:
        return self.user_id or self.citizen

    async def post(self, body: bytes, at: float) -> None:
        self.simulator.open_window(self.address, at)
        assert await send_webhook(self.pipeline.webhook_url, body, APP_SECRET) == 200

    async def say(self, text: str, *, at: float | None = None) -> str:
        moment = time.time() if at is None else at
        if self.user_id is not None:
            body, wamid = text_message_webhook(
                user_id=self.user_id, text=text, timestamp=int(moment)
            )
        else:
            body, wamid = text_message_webhook(wa_id=self.citizen, text=text, timestamp=int(moment))
        await self.post(body, moment)
        return wamid

    async def send(self, build: Callable[..., tuple[bytes, str]], **fields: Any) -> str:
        moment = time.time()
        body, wamid = build(wa_id=self.citizen, timestamp=int(moment), **fields)
        await self.post(body, moment)
        return wamid

    def sends(self) -> list[RecordedSend]:
        return self.simulator.sent(to=self.address, include_failed=True)

    def replies_to(self, wamid: str) -> list[RecordedSend]:
        return [s for s in self.sends() if s.reply_to == wamid]

    def away_notices(self) -> list[RecordedSend]:
        return [s for s in self.sends() if s.reply_to is None]

    async def reply_to(self, wamid: str) -> RecordedSend:
        await self.simulator.state.wait_for(lambda: bool(self.replies_to(wamid)), TIMEOUT)
        [reply] = self.replies_to(wamid)
        assert reply.accepted, reply
        return reply

    async def audit(self, correlation_id: str, kinds: set[str]) -> dict[str, dict[str, Any]]:
        """Wait until the audit log holds these kinds for the id; return kind -> payload."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            rows = await self.database.fetch(
                "SELECT kind, payload FROM audit_log WHERE correlation_id = $1 ORDER BY seq",
                correlation_id,
            )
            found = {row["kind"]: orjson.loads(row["payload"]) for row in rows}
            if kinds <= set(found):
                assert len(found) == len(rows), [row["kind"] for row in rows]  # each kind once
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"audit for {correlation_id}: {sorted(found)} lacks {kinds}")
            await asyncio.sleep(0.05)


@pytest.fixture
def talk(
    pipeline: Pipeline, simulator: Simulator, database: asyncpg.Pool
) -> Callable[..., Conversation]:
    def start(citizen: str | None = None, *, user_id: str | None = None) -> Conversation:
        return Conversation(pipeline, simulator, database, citizen or new_citizen(), user_id)

    return start


def expected(
    reply: Reply, conversation: Conversation, wamid: str | None, place: Place | None = None
) -> dict[str, Any]:
    return to_graph_message(
        reply,
        to=conversation.address,
        reply_to=wamid,
        by_user_id=conversation.user_id is not None,
        place=place,
    )


# --- every seed service in every language -----------------------------------------------------

SERVICES: dict[str, list[tuple[str, str]]] = {
    "ko": [
        ("voting", "투표소 위치 알려주세요"),
        ("shelter", "가장 가까운 대피소가 어디예요?"),
        ("health", "독감 예방접종은 어디서 맞을 수 있나요?"),
        ("food_aid", "식량 지원을 받으려면 어떻게 신청하나요?"),
        ("passport", "여권 재발급 받으려면 뭐가 필요해요?"),
        ("report_abuse", "옆집에서 아동학대가 의심돼요. 신고하고 싶어요"),
        ("office_hours", "구청 민원실 운영시간이 어떻게 되나요?"),
        ("help", "안녕하세요"),
        ("opt_out", "수신거부"),
        ("opt_in", "시작"),
        ("unknown", "신분증은 뭘 가져가야 하나요?"),
    ],
    "ja": [
        ("voting", "期日前投票はいつからできますか"),
        ("shelter", "避難所はどこですか"),
        ("health", "コロナワクチンの予約方法を教えてください"),
        ("food_aid", "フードバンクはどこにありますか"),
        ("passport", "パスポートの更新はどこでできますか"),
        ("report_abuse", "近所で子どもが虐待されているようです"),
        ("office_hours", "市役所の窓口は何時まで開いていますか"),
        ("help", "こんにちは"),
        ("opt_out", "配信停止"),
        ("opt_in", "開始"),
        ("unknown", "ありがとうございます"),
    ],
    "en": [
        ("voting", "Where is my polling station?"),
        ("shelter", "Where is the nearest evacuation center?"),
        ("health", "Where can I get a flu vaccine for my kids?"),
        ("food_aid", "Where is the nearest food bank?"),
        ("passport", "How do I renew my passport?"),
        ("report_abuse", "I want to report domestic violence"),
        ("office_hours", "What are your opening hours on Saturday?"),
        ("help", "hi"),
        ("opt_out", "STOP"),
        ("opt_in", "START"),
        ("unknown", "I devoted my life to this"),
    ],
}


@pytest.mark.parametrize("language", ["ko", "ja", "en"])
async def test_every_seed_service_answers_in_the_citizens_language(
    talk: Callable[..., Conversation], catalog: Catalog, language: str
) -> None:
    async def converse(intent: str, text: str) -> None:
        conversation = talk()
        wamid = await conversation.say(text)
        reply = await conversation.reply_to(wamid)
        answer = choose_reply(catalog, intent, language)
        assert answer.language == language
        assert reply.body == expected(answer, conversation, wamid), intent

        kinds = {f"message.{intent}", "outbound.sent"}
        if intent == "report_abuse":
            kinds.add("handoff.protection")
        audited = await conversation.audit(wamid, kinds)
        assert set(audited) == kinds, intent
        assert audited[f"message.{intent}"]["language"] == language
        assert audited["outbound.sent"]["wamid"] == reply.wamid
        if intent == "report_abuse":
            handoff = audited["handoff.protection"]
            assert (handoff["team"], handoff["citizen"], handoff["text"]) == (
                "protection",
                conversation.citizen,
                text,
            )

        if intent in NO_AWAY:
            return
        away = choose_away(catalog, language)
        assert away is not None
        await conversation.simulator.state.wait_for(
            lambda: bool(conversation.away_notices()), TIMEOUT
        )
        [notice] = conversation.away_notices()
        assert notice.body == expected(away, conversation, None)
        assert notice.sequence > reply.sequence  # the answer first, then the notice
        away_audit = await conversation.audit(f"away:{wamid}", {"outbound.sent"})
        assert away_audit["outbound.sent"]["purpose"] == "away"
        assert away_audit["outbound.sent"]["wamid"] == notice.wamid

    await asyncio.gather(*(converse(intent, text) for intent, text in SERVICES[language]))


async def test_no_away_notice_follows_the_answers_that_must_stand_alone(
    talk: Callable[..., Conversation],
) -> None:
    conversations = [(talk(), text) for text in ("STOP", "I want to report abuse", "office hours")]
    for conversation, text in conversations:
        await conversation.reply_to(await conversation.say(text))
    # A later message's reply (sent before its notice) proves the earlier ones had their turn.
    for conversation, _ in conversations:
        await conversation.reply_to(await conversation.say("START"))
        assert conversation.away_notices() == []


# --- menus: tapping a list row or a button ----------------------------------------------------


async def test_tapping_the_menu_reaches_every_service_with_one_away_notice(
    talk: Callable[..., Conversation], catalog: Catalog
) -> None:
    conversation = talk()
    first = await conversation.say("도움말")
    menu = await conversation.reply_to(first)
    assert menu.body == expected(choose_reply(catalog, "help", "ko"), conversation, first)
    rows = [
        row for section in menu.body["interactive"]["action"]["sections"] for row in section["rows"]
    ]
    # Alerts (menu_subscribe) answers with the topic list: tests/e2e/test_broadcasts.py.
    services = [row for row in rows if row["id"] not in ("menu_opt_out", "menu_subscribe")]

    async def tap(row: dict[str, Any]) -> None:
        wamid = await conversation.send(
            interactive_reply_webhook,
            reply_id=row["id"],
            title=row["title"],
            description=row.get("description"),
            in_reply_to=menu.wamid,
        )
        intent = row["id"].removeprefix("menu_")
        reply = await conversation.reply_to(wamid)
        assert reply.body == expected(choose_reply(catalog, intent, "ko"), conversation, wamid)

    await asyncio.gather(*(tap(row) for row in services))

    # The food-aid answer has buttons; "메뉴" brings the menu back.
    food_aid = choose_reply(catalog, "food_aid", "ko")
    [menu_button] = [b for b in food_aid.buttons if b.id == "menu_help"]
    wamid = await conversation.send(
        interactive_reply_webhook,
        kind="button_reply",
        reply_id="menu_help",
        title=menu_button.title,
    )
    again = await conversation.reply_to(wamid)
    assert again.body["interactive"]["type"] == "list"

    [stop] = [row for row in rows if row["id"] == "menu_opt_out"]
    await tap(stop)
    # Once per conversation: ten answers, one away notice.
    await conversation.simulator.state.wait_for(lambda: bool(conversation.away_notices()), 30)
    assert len(conversation.away_notices()) == 1
    assert conversation.away_notices()[0].sequence > menu.sequence


# --- shelters: the nearest one to a shared location -------------------------------------------

SHARED_LOCATIONS = [
    ("ko", "가까운 대피소 알려주세요", (37.5663, 126.9779), 0),  # Seoul City Hall: Jongno
    ("ja", "避難所はどこですか", (37.4979, 127.0276), 2),  # Gangnam Station: Gangnam
    ("en", "Is there an emergency shelter open tonight?", (37.5113, 127.0980), 3),  # Jamsil
]


@pytest.mark.parametrize(("language", "question", "position", "nearest"), SHARED_LOCATIONS)
async def test_a_shared_location_gets_the_nearest_shelter_in_the_citizens_language(
    talk: Callable[..., Conversation],
    catalog: Catalog,
    language: str,
    question: str,
    position: tuple[float, float],
    nearest: int,
) -> None:
    conversation = talk()
    asked = await conversation.say(question)
    text_answer = await conversation.reply_to(asked)
    shelters = choose_reply(catalog, "shelter", language)
    assert text_answer.body == expected(shelters, conversation, asked)  # asks for a location

    shared = await conversation.send(
        location_message_webhook, latitude=position[0], longitude=position[1]
    )
    pin = await conversation.reply_to(shared)
    place = shelters.places[nearest]
    assert pin.body == expected(shelters, conversation, shared, place)
    assert pin.body["location"] == {
        "latitude": place.latitude,
        "longitude": place.longitude,
        "name": place.name,
        "address": place.address,
    }
    audited = await conversation.audit(shared, {"message.shelter", "outbound.sent"})
    assert audited["message.shelter"]["content"]["latitude"] == position[0]


# --- citizens known only by a username --------------------------------------------------------


async def test_a_username_citizen_is_keyed_and_answered_by_the_business_scoped_id(
    talk: Callable[..., Conversation], catalog: Catalog
) -> None:
    conversation = talk(user_id=f"KR.{next(_numbers):020d}")
    wamid = await conversation.say("여권 재발급 받으려면 뭐가 필요해요?")
    reply = await conversation.reply_to(wamid)
    assert reply.body["recipient"] == conversation.user_id
    assert "to" not in reply.body
    assert reply.body == expected(choose_reply(catalog, "passport", "ko"), conversation, wamid)
    await conversation.simulator.state.wait_for(lambda: bool(conversation.away_notices()), 30)
    assert conversation.away_notices()[0].body["recipient"] == conversation.user_id

    # The stored language belongs to that id: an emoji-only message is answered in Korean.
    again = await conversation.say("👍")
    menu = await conversation.reply_to(again)
    assert menu.body == expected(choose_reply(catalog, "unknown", "ko"), conversation, again)
    audited = await conversation.audit(wamid, {"message.passport", "outbound.sent"})
    assert audited["message.passport"]["from_user_id"] == conversation.user_id
    assert audited["outbound.sent"]["to"] == conversation.user_id


# --- opt-out and opt-in -----------------------------------------------------------------------

STOP_WORDS = [
    ("stop", "en"),
    ("unsubscribe", "en"),
    ("중지", "ko"),
    ("수신거부", "ko"),
    ("停止", "ja"),
    ("配信停止", "ja"),
]


async def test_stop_words_in_every_language_get_one_confirmation_and_nothing_else(
    talk: Callable[..., Conversation], catalog: Catalog
) -> None:
    async def opt_out_and_back(word: str, language: str) -> None:
        conversation = talk()
        stop = await conversation.say(word)
        confirmation = await conversation.reply_to(stop)
        assert confirmation.body == expected(
            choose_reply(catalog, "opt_out", language), conversation, stop
        )
        question = await conversation.say("투표소 위치 알려주세요")
        await conversation.audit(question, {"message.voting", "outbound.suppressed"})
        repeated = await conversation.say(word)
        await conversation.audit(repeated, {"message.opt_out"})
        # START is answered after the repeated STOP was handled (one queue, in order).
        start = await conversation.say("START")
        await conversation.reply_to(start)

        assert conversation.replies_to(question) == []
        assert conversation.replies_to(repeated) == []
        assert [s.reply_to for s in conversation.sends()] == [stop, start]
        audited = await conversation.audit(repeated, {"message.opt_out"})
        assert set(audited) == {"message.opt_out"}
        assert audited["message.opt_out"]["needs_reply"] is False

    await asyncio.gather(*(opt_out_and_back(word, lang) for word, lang in STOP_WORDS))


async def test_an_older_start_delivered_after_a_newer_stop_leaves_the_citizen_opted_out(
    talk: Callable[..., Conversation], database: asyncpg.Pool
) -> None:
    # Meta does not guarantee order (reference §4): the STOP, sent a minute after a START,
    # arrives first. Its word stands; the START is not confirmed.
    conversation = talk()
    now = int(time.time())
    stop = await conversation.say("STOP", at=now)
    await conversation.reply_to(stop)
    start = await conversation.say("START", at=now - 60)
    audited = await conversation.audit(start, {"message.opt_in", "outbound.suppressed"})
    assert audited["message.opt_in"]["opted_out"] is True
    assert audited["outbound.suppressed"]["reason"] == "superseded"
    question = await conversation.say("투표소 위치 알려주세요")
    await conversation.audit(question, {"message.voting", "outbound.suppressed"})
    assert [s.reply_to for s in conversation.sends()] == [stop]
    contact = await database.fetchrow(
        "SELECT opted_out, consent_changed_at FROM contacts WHERE citizen = $1",
        conversation.citizen,
    )
    assert contact is not None
    assert contact["opted_out"]
    assert contact["consent_changed_at"] == datetime.fromtimestamp(now, UTC)


# --- a sender Meta refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [190, 368])
async def test_a_refused_sender_holds_the_reply_until_meta_takes_it(
    talk: Callable[..., Conversation], code: int
) -> None:
    # An expired token (190) or a blocked number (368) refuses every send, whatever the
    # message (reference §6: "pause the sender"). The reply waits until people fix the
    # sender (here: after three refusals) instead of being recorded as failed; meanwhile Meta
    # is asked once per probe interval, not at every retry, and the responder stays ready
    # (nothing in it is broken, and its campaign API must stay reachable).
    conversation = talk()
    conversation.simulator.inject_faults([{"code": code, "count": 3, "to": conversation.citizen}])
    wamid = await conversation.say("투표소 위치 알려주세요")

    readiness: list[bool] = []
    while not any(send.accepted for send in conversation.replies_to(wamid)):
        assert len(readiness) < TIMEOUT / 0.1, "the reply never went"
        readiness.append(await conversation.pipeline.is_ready("responder"))
        await asyncio.sleep(0.1)
    assert all(readiness)
    audited = await conversation.audit(wamid, {"message.voting", "outbound.sent"})
    assert "outbound.failed" not in audited
    attempts = conversation.replies_to(wamid)
    assert [send.accepted for send in attempts] == [False, False, False, True]
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= PROBE_SECONDS * 0.9, gaps


# --- the 24-hour window -----------------------------------------------------------------------


@pytest.mark.parametrize("language", ["ko", "ja", "en"])
async def test_a_message_answered_after_the_window_closed_gets_the_template(
    talk: Callable[..., Conversation], catalog: Catalog, language: str
) -> None:
    conversation = talk()
    text = dict(SERVICES[language])["voting"]
    # Meta retried this webhook for a day (it does for up to 7): the window has closed.
    wamid = await conversation.say(text, at=time.time() - 25 * 3600)
    reply = await conversation.reply_to(wamid)
    template = choose_template(catalog, "voting", language)
    assert reply.body == expected(template, conversation, wamid)
    assert reply.body["type"] == "template"
    audited = await conversation.audit(wamid, {"message.voting", "outbound.sent"})
    assert audited["outbound.sent"]["message"]["type"] == "template"
    assert conversation.away_notices() == []  # free-form is not allowed, so no notice either


async def test_a_reply_refused_as_the_window_closed_goes_as_the_template_instead(
    talk: Callable[..., Conversation], catalog: Catalog
) -> None:
    # The message is recent, so the reply is free-form; but Meta's record of the citizen's
    # last message is older (here the simulator's), so its window has closed: 131047. The
    # reference (§6): do not retry the free-form message, send the approved template.
    conversation = talk()
    body, wamid = text_message_webhook(
        wa_id=conversation.citizen, text=dict(SERVICES["en"])["voting"], timestamp=int(time.time())
    )
    await conversation.post(body, at=time.time() - 25 * 3600)

    def answered() -> bool:
        return any(send.accepted for send in conversation.replies_to(wamid))

    await conversation.simulator.state.wait_for(answered, TIMEOUT)
    refused, sent = conversation.replies_to(wamid)
    assert (refused.accepted, refused.body["type"] != "template") == (False, True)
    assert sent.body == expected(choose_template(catalog, "voting", "en"), conversation, wamid)
    audited = await conversation.audit(wamid, {"message.voting", "outbound.sent"})
    assert audited["outbound.sent"]["message"]["type"] == "template"
    assert "outbound.failed" not in audited
    assert conversation.away_notices() == []  # free-form, so it would be refused as well


# --- other message types: classified, never dropped -------------------------------------------


async def test_media_contacts_reactions_and_unsupported_messages_are_classified(
    talk: Callable[..., Conversation], catalog: Catalog
) -> None:
    conversation = talk(new_citizen("81"))
    greeting = await conversation.say("こんにちは")  # the stored language becomes Japanese
    await conversation.reply_to(greeting)
    menu = choose_reply(catalog, "unknown", "ja")

    photo = await conversation.send(
        message_webhook, message_type="image", content={"id": "1", "mime_type": "image/jpeg"}
    )
    card = await conversation.send(
        message_webhook,
        message_type="contacts",
        content=[{"name": {"formatted_name": "Kim"}, "phones": [{"phone": "+821012345678"}]}],
    )
    unsupported = await conversation.send(
        message_webhook,
        message_type="unsupported",
        content=None,
        errors=[{"code": 131051, "title": "Message type unknown"}],
    )
    passport_photo = await conversation.send(
        message_webhook,
        message_type="image",
        content={"id": "2", "mime_type": "image/jpeg", "caption": "パスポートの写真です"},
    )
    for wamid in (photo, card, unsupported):
        reply = await conversation.reply_to(wamid)
        assert reply.body == expected(menu, conversation, wamid)
        await conversation.audit(wamid, {"message.unknown", "outbound.sent"})
    captioned = await conversation.reply_to(passport_photo)
    assert captioned.body == expected(
        choose_reply(catalog, "passport", "ja"), conversation, passport_photo
    )

    reaction = await conversation.send(
        message_webhook,
        message_type="reaction",
        content={"message_id": captioned.wamid, "emoji": "👍"},
    )
    system = await conversation.send(
        message_webhook,
        message_type="system",
        content={"body": "changed number", "type": "user_changed_number", "wa_id": "8100"},
    )
    for wamid, kind in ((reaction, "message.reaction"), (system, "message.unknown")):
        audited = await conversation.audit(wamid, {kind})
        assert audited[kind]["needs_reply"] is False
    barrier = await conversation.say("避難所はどこですか")
    await conversation.reply_to(barrier)
    assert conversation.replies_to(reaction) == conversation.replies_to(system) == []


async def test_mixed_scripts_are_answered_in_the_language_of_the_writer(
    talk: Callable[..., Conversation], catalog: Catalog
) -> None:
    conversation = talk()
    wamid = await conversation.say("passport를 잃어버렸어요")
    reply = await conversation.reply_to(wamid)
    assert reply.body == expected(choose_reply(catalog, "passport", "ko"), conversation, wamid)
    english = talk()
    quoted = await english.say("Where is the nearest polling station, 투표소?")
    answer = await english.reply_to(quoted)
    assert answer.body == expected(choose_reply(catalog, "voting", "en"), english, quoted)
