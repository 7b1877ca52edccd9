"""Intent classification with the packaged rules, and validation of rules files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civicline.router.core import INTENTS, InboundMessage, Route, parse_webhook
from civicline.router.rules import (
    KEYWORD_INTENTS,
    Rules,
    RulesError,
    classify,
    load_rules,
    normalise_text,
)

RECEIVED_AT = datetime(2026, 7, 20, 12, 0, tzinfo=UTC)
Webhook = Callable[[str], Any]


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


def message(
    text: str | None = None,
    *,
    message_type: str = "text",
    reply_id: str | None = None,
    content: dict[str, Any] | None = None,
) -> InboundMessage:
    return InboundMessage(
        wamid="wamid.test",
        phone_number_id="106512349876543",
        display_phone_number="15550100200",
        waba_id="109384756102938",
        sender="821052347781",
        sender_user_id=None,
        profile_name=None,
        timestamp=RECEIVED_AT,
        type=message_type,
        text=text,
        reply_id=reply_id,
        context_id=None,
        content=content or {},
        errors=(),
    )


def intent_of(text: str, rules: Rules) -> str:
    return classify(message(text), rules).intent


def test_intent_names_are_the_contract() -> None:
    contract = frozenset(
        {
            "voting",
            "shelter",
            "health",
            "food_aid",
            "passport",
            "report_abuse",
            "office_hours",
            "help",
            "subscribe",
            "unsubscribe",
            "opt_out",
            "opt_in",
            "reaction",
            "unknown",
        }
    )
    assert contract == INTENTS
    keyword_intents = contract - {
        "opt_out",
        "opt_in",
        "reaction",
        "unknown",
        "subscribe",
        "unsubscribe",
    }
    assert keyword_intents == KEYWORD_INTENTS


def test_packaged_rules_configure_every_keyword_intent(rules: Rules) -> None:
    assert {rule.name for rule in rules.intents} == KEYWORD_INTENTS
    assert rules.intents[0].name == "report_abuse"
    priorities = [rule.priority for rule in rules.intents]
    assert priorities == sorted(priorities)


# --- what citizens write --------------------------------------------------------------

CITIZEN_SENTENCES = [
    # voting
    ("투표소 위치 알려주세요", "voting"),
    ("사전투표는 언제 하나요?", "voting"),
    ("이번 선거 후보자 명단은 어디서 보나요?", "voting"),
    ("期日前投票はいつからできますか", "voting"),
    ("投票所はどこですか？", "voting"),
    ("Where is my polling station?", "voting"),
    ("How do I register to vote?", "voting"),
    ("When is the election?", "voting"),
    # shelter
    ("가장 가까운 대피소가 어디예요?", "shelter"),
    ("지진이 나면 어디로 대피해야 하나요", "shelter"),
    ("避難所はどこですか", "shelter"),
    ("避難指示が出ましたがどこへ行けばいいですか", "shelter"),
    ("Where is the nearest evacuation center?", "shelter"),
    ("Is there an emergency shelter open tonight?", "shelter"),
    # health
    ("독감 예방접종은 어디서 맞을 수 있나요?", "health"),
    ("코로나 백신 예약하고 싶어요", "health"),
    ("コロナワクチンの予約方法を教えてください", "health"),
    ("子どもの予防接種はどこで受けられますか", "health"),
    ("Where can I get a flu vaccine for my kids?", "health"),
    ("Is the clinic near the station taking new patients?", "health"),
    # food_aid
    ("식량 지원을 받으려면 어떻게 신청하나요?", "food_aid"),
    ("무료급식소가 어디 있나요", "food_aid"),
    ("生活保護の申請をしたいです", "food_aid"),
    ("給水所の場所を教えてください", "food_aid"),
    ("フードバンクはどこにありますか", "food_aid"),
    ("Where is the nearest food bank?", "food_aid"),
    ("I lost my job, can I get welfare benefits?", "food_aid"),
    # passport
    ("여권 재발급 받으려면 뭐가 필요해요?", "passport"),
    ("출생신고는 어디서 하나요?", "passport"),
    ("パスポートの更新はどこでできますか", "passport"),
    ("旅券の申請に必要な書類は？", "passport"),
    ("How do I renew my passport?", "passport"),
    ("Can I renew a child's passport online too?", "passport"),
    ("I need to report my lost passport", "passport"),
    # report_abuse
    ("옆집에서 아동학대가 의심돼요. 신고하고 싶어요", "report_abuse"),
    ("남편이 때려요 도와주세요", "report_abuse"),
    ("近所で子どもが虐待されているようです", "report_abuse"),
    ("DVの相談と通報をしたいです", "report_abuse"),
    ("I want to report domestic violence", "report_abuse"),
    ("how do I stop the abuse", "report_abuse"),
    ("My neighbour is being abused, please help", "report_abuse"),
    # office_hours
    ("구청 민원실 운영시간이 어떻게 되나요?", "office_hours"),
    ("토요일에도 문 열어요?", "office_hours"),
    ("市役所の窓口は何時まで開いていますか", "office_hours"),
    ("区役所の住所を教えてください", "office_hours"),
    ("What are your opening hours on Saturday?", "office_hours"),
    ("Where is the town hall?", "office_hours"),
    # help
    ("안녕하세요", "help"),
    ("메뉴 보여주세요", "help"),
    ("こんにちは", "help"),
    ("メニューを見せてください", "help"),
    ("hi", "help"),
    ("What can you help me with?", "help"),
    ("Hello!", "help"),
]


@pytest.mark.parametrize(("text", "expected"), CITIZEN_SENTENCES)
def test_citizen_sentence(rules: Rules, text: str, expected: str) -> None:
    assert intent_of(text, rules) == expected


def test_every_keyword_intent_has_ko_ja_and_en_examples() -> None:
    def language(text: str) -> str:
        if any("\uac00" <= char <= "\ud7a3" for char in text):
            return "ko"
        if any("\u3040" <= char <= "\u30ff" or "\u4e00" <= char <= "\u9fff" for char in text):
            return "ja"
        return "en"

    covered = {(intent, language(text)) for text, intent in CITIZEN_SENTENCES}
    assert covered == {(i, lang) for i in KEYWORD_INTENTS for lang in ("ko", "ja", "en")}


def test_every_packaged_keyword_classifies_as_its_intent_or_an_earlier_one(rules: Rules) -> None:
    priority = {rule.name: rule.priority for rule in rules.intents}
    for rule in rules.intents:
        for keyword in rule.keywords:
            got = intent_of(keyword.removesuffix("*"), rules)
            assert got in priority, (keyword, got)
            assert priority[got] <= rule.priority, (keyword, rule.name, got)


# --- opt-out and opt-in ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        "stop ",
        " Stop!",
        "ＳＴＯＰ",
        "STOP 🛑",
        "중지",
        "수신거부",
        "수신 거부",
        "停止",
        "配信停止",
        "unsubscribe",
        "Unsubscribe.",
        "stop all",
        "그만",
        "Stop promotions",
        "수신 중지",
        "ストップ",
        "配信解除",
        # a few common others
        "baja",
        "Arrêt",
        "ARRET",
        "Stopp",
        "abmelden",
        "退订",
    ],
)
def test_opt_out_words(rules: Rules, text: str) -> None:
    route = classify(message(text), rules)

    assert route == Route(intent="opt_out", urgent=False, needs_reply=True)


@pytest.mark.parametrize(
    "text", ["START", "start", "시작", "開始", "subscribe", "Ｓｔａｒｔ", "配信開始"]
)
def test_opt_in_words(rules: Rules, text: str) -> None:
    assert intent_of(text, rules) == "opt_in"


@pytest.mark.parametrize(
    "text",
    [
        "how do I stop the abuse",
        "please don't stop sending the shelter alerts",
        "투표 중지 되었나요?",
        "停止した避難所はどこですか",
        "stopping by the office tomorrow",
        "start time of the election?",
    ],
)
def test_opt_words_inside_a_sentence_are_not_opt_out_or_in(rules: Rules, text: str) -> None:
    assert intent_of(text, rules) not in ("opt_out", "opt_in")


# --- normalisation and word boundaries ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ｈｏｗ ｄｏ Ｉ ｒｅｎｅｗ ｍｙ ＰＡＳＳＰＯＲＴ？", "passport"),
        ("ﾜｸﾁﾝの予約", "health"),
        ("ＤＶの被害", "report_abuse"),
        ("VOTING HOURS???", "voting"),
        ("where’s the polling place", "voting"),
        ("passport를 잃어버렸어요", "passport"),
        ("Voters need ID?", "voting"),
        ("evacuation route please", "shelter"),
        ("I devoted my life to this", "unknown"),
        ("this is it", "unknown"),
        ("", "unknown"),
        ("   ", "unknown"),
        ("?!…", "unknown"),
        ("👍", "unknown"),
        ("신분증은 뭘 가져가야 하나요?", "unknown"),
    ],
)
def test_normalisation_and_boundaries(rules: Rules, text: str, expected: str) -> None:
    assert intent_of(text, rules) == expected


def test_normalise_text() -> None:
    assert normalise_text("  ＳＴＯＰ\u3000now  ") == "stop now"
    assert normalise_text("ﾊﾟｽﾎﾟｰﾄ") == "パスポート"
    assert normalise_text("Straße’s") == "strasse's"


def test_report_abuse_wins_over_other_intents(rules: Rules) -> None:
    assert intent_of("Someone at the shelter is abusing children", rules) == "report_abuse"
    assert intent_of("避難所で暴力を受けました", rules) == "report_abuse"


def test_registration_is_not_an_abuse_report(rules: Rules) -> None:
    assert intent_of("전입신고 하려면 뭐가 필요해요?", rules) == "passport"
    assert classify(message("전입신고 하려면 뭐가 필요해요?"), rules).urgent is False


# --- reply ids and message types ------------------------------------------------------


@pytest.mark.parametrize("intent", sorted(KEYWORD_INTENTS))
def test_catalog_reply_ids(rules: Rules, intent: str) -> None:
    for reply_id in (intent, f"menu_{intent}", intent.upper()):
        route = classify(message("Choose", message_type="interactive", reply_id=reply_id), rules)
        assert route.intent == intent, reply_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("04_interactive_button_reply.json", "passport"),  # passport_renew_online
        ("05_interactive_list_reply.json", "voting"),  # svc_election_polling_place
        ("06_template_quick_reply_button.json", "shelter"),  # SHELTER_ALERT_ACK
    ],
)
def test_sample_reply_ids(rules: Rules, webhook: Webhook, name: str, expected: str) -> None:
    (parsed,) = parse_webhook(webhook(name), received_at=RECEIVED_AT).messages

    assert classify(parsed, rules).intent == expected


def test_reply_id_beats_the_text(rules: Rules) -> None:
    tapped = message("STOP", message_type="interactive", reply_id="shelter")

    assert classify(tapped, rules).intent == "shelter"


def test_unknown_reply_id_falls_back_to_the_title(rules: Rules) -> None:
    tapped = message("Renew my passport", message_type="interactive", reply_id="zz_unknown")

    assert classify(tapped, rules).intent == "passport"


def test_opt_reply_ids(rules: Rules) -> None:
    assert classify(message("Yes", reply_id="opt_out"), rules).intent == "opt_out"
    assert classify(message("Yes", reply_id="menu_opt_in"), rules).intent == "opt_in"


def test_location_means_shelter(rules: Rules) -> None:
    shared = message(message_type="location", content={"latitude": 35.6, "longitude": 139.6})

    assert classify(shared, rules) == Route(intent="shelter", urgent=False, needs_reply=True)


@pytest.mark.parametrize("emoji", ["👍", ""])
def test_reaction_needs_no_reply(rules: Rules, emoji: str) -> None:
    reacted = message(message_type="reaction", content={"message_id": "wamid.x", "emoji": emoji})

    assert classify(reacted, rules) == Route(intent="reaction", urgent=False, needs_reply=False)


@pytest.mark.parametrize(
    ("message_type", "caption", "expected"),
    [
        ("image", None, "unknown"),
        ("document", None, "unknown"),
        ("audio", None, "unknown"),
        ("sticker", None, "unknown"),
        ("image", "Photo page of my current passport", "passport"),
        ("document", "예방접종 증명서입니다", "health"),
        ("unsupported", None, "unknown"),
        ("system", None, "unknown"),
        ("foo", None, "unknown"),
    ],
)
def test_message_types(rules: Rules, message_type: str, caption: str | None, expected: str) -> None:
    assert classify(message(caption, message_type=message_type), rules).intent == expected


@pytest.mark.parametrize(
    ("message_type", "content"),
    [
        ("contacts", {"contacts": [{"name": {"formatted_name": "Kim"}}]}),
        ("unsupported", {}),
        ("order", {"catalog_id": "1"}),
        ("request_welcome", {}),
        ("video", {"id": "1", "mime_type": "video/mp4"}),
    ],
)
def test_what_the_rules_cannot_place_is_unknown_and_gets_the_help_menu(
    rules: Rules, message_type: str, content: dict[str, Any]
) -> None:
    route = classify(message(message_type=message_type, content=content), rules)
    assert route == Route(intent="unknown", urgent=False, needs_reply=True)


def test_a_system_notice_is_classified_but_not_answered(rules: Rules) -> None:
    notice = message(
        "User A changed from 821052347781 to 821099999999",
        message_type="system",
        content={"type": "user_changed_number", "wa_id": "821099999999"},
    )
    assert classify(notice, rules) == Route(intent="unknown", urgent=False, needs_reply=False)


def test_abuse_reports_are_handed_to_the_protection_team(rules: Rules) -> None:
    assert rules.handoffs == {"report_abuse": "protection"}
    for text in ("I want to report domestic violence", "남편이 때려요", "虐待されています"):
        assert classify(message(text), rules).handoff == "protection"
    tapped = message("Report abuse", message_type="interactive", reply_id="menu_report_abuse")
    assert classify(tapped, rules).handoff == "protection"
    assert classify(message("투표소"), rules).handoff is None


def test_abuse_reports_are_the_only_urgent_routes(rules: Rules) -> None:
    for text, expected in CITIZEN_SENTENCES:
        route = classify(message(text), rules)
        assert route.urgent is (expected == "report_abuse"), text
        assert route.needs_reply is True


SAMPLE_INTENTS = {
    "01_text_ko_voting.json": ["voting"],
    "02_text_ja_evacuation.json": ["shelter"],
    "03_text_en_passport.json": ["passport"],
    "07_location.json": ["shelter"],
    "08_image_with_caption.json": ["passport"],
    "09_reaction.json": ["reaction"],
    "10_unsupported_with_errors.json": ["unknown"],
    "15_batch_3_messages_2_users.json": ["voting", "passport", "unknown"],
    "16_two_entries.json": ["food_aid"],
    "18_document.json": ["unknown"],
}


@pytest.mark.parametrize(("name", "expected"), SAMPLE_INTENTS.items())
def test_sample_bodies_classify(
    rules: Rules, webhook: Webhook, name: str, expected: list[str]
) -> None:
    parsed = parse_webhook(webhook(name), received_at=RECEIVED_AT)

    assert [classify(item, rules).intent for item in parsed.messages] == expected


# --- totality -------------------------------------------------------------------------

any_text = st.text(alphabet=st.characters(exclude_categories=()))  # surrogates included


@given(
    text=st.none() | any_text,
    message_type=st.sampled_from(["text", "interactive", "button", "image", "location", "foo"])
    | st.text(),
    reply_id=st.none() | any_text,
)
def test_classify_is_total(text: str | None, message_type: str, reply_id: str | None) -> None:
    route = classify(message(text, message_type=message_type, reply_id=reply_id), load_rules())

    assert route.intent in INTENTS
    assert route.urgent is (route.intent == "report_abuse")
    assert route.needs_reply is (route.intent != "reaction" and message_type != "system")
    assert route.handoff == ("protection" if route.intent == "report_abuse" else None)


@given(text=st.text(), title=st.text(), reply_id=st.text())
def test_classify_is_total_over_parsed_messages(text: str, title: str, reply_id: str) -> None:
    def body(item: dict[str, Any]) -> dict[str, Any]:
        base = {"from": "821052347781", "timestamp": "1784361600", **item}
        value = {"metadata": {"phone_number_id": "1"}, "messages": [base]}
        change = {"field": "messages", "value": value}
        return {"object": "whatsapp_business_account", "entry": [{"changes": [change]}]}

    typed = body({"id": "wamid.t", "type": "text", "text": {"body": text}})
    tapped = body(
        {
            "id": "wamid.i",
            "type": "interactive",
            "interactive": {"type": "list_reply", "list_reply": {"id": reply_id, "title": title}},
        }
    )
    rules = load_rules()
    for payload in (typed, tapped):
        for parsed in parse_webhook(payload, received_at=RECEIVED_AT).messages:
            assert classify(parsed, rules).intent in INTENTS


# --- rules files ----------------------------------------------------------------------

MINIMAL_RULES = """
version = 1

[message_types]
location = "shelter"

[opt_out]
words = ["stop"]

[opt_in]
words = ["start"]

[intents.shelter]
priority = 1
reply_ids = ["shelter", "shelter_*"]
keywords = { en = ["shelter*", "safe"], ko = ["대피"] }

[intents.help]
priority = 2
keywords = { en = ["help", "safe"] }
"""


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_rules_from_a_path(tmp_path: Path) -> None:
    path = write_rules(tmp_path, MINIMAL_RULES)

    for argument in (path, str(path)):
        loaded = load_rules(argument)
        assert loaded.source == str(path)
        assert [rule.name for rule in loaded.intents] == ["shelter", "help"]
        assert loaded.reply_ids == {"shelter": "shelter"}
        assert loaded.reply_id_prefixes == (("shelter_", "shelter"),)


def test_handoff_teams_from_a_rules_file(tmp_path: Path) -> None:
    text = MINIMAL_RULES.replace("priority = 2", 'priority = 2\nhandoff = "front-desk_2"')
    loaded = load_rules(write_rules(tmp_path, text))
    assert loaded.handoffs == {"help": "front-desk_2"}
    assert classify(message("help"), loaded).handoff == "front-desk_2"
    assert classify(message("shelter"), loaded).handoff is None


def test_lower_priority_number_wins(tmp_path: Path) -> None:
    loaded = load_rules(write_rules(tmp_path, MINIMAL_RULES))

    assert intent_of("is it safe", loaded) == "shelter"
    assert intent_of("help", loaded) == "help"
    assert intent_of("hello", loaded) == "unknown"


def test_packaged_rules_name_their_file(rules: Rules) -> None:
    assert rules.source.endswith("rules.toml")
    assert rules.version == 1


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(RulesError, match="rules file not found") as caught:
        load_rules(missing)
    assert str(missing) in str(caught.value)


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "version = = 1")

    with pytest.raises(RulesError, match="not valid TOML") as caught:
        load_rules(path)
    assert str(path) in str(caught.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"version = 1\n# \xff\n")

    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules(path)


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("[intents.help]", "[intents.helpp]"), "intents.helpp", "unknown intent 'helpp'"),
        (("[intents.help]", "[intents.opt_out]"), "intents.opt_out", "own [opt_out] table"),
        (("[intents.help]", "[intents.reaction]"), "intents.reaction", "built in"),
        (('["help", "safe"]', '["help", 5]'), "intents.help.keywords.en[1]", "got an integer"),
        (('["help", "safe"]', '["help", ""]'), "intents.help.keywords.en[1]", "is empty"),
        (('["help", "safe"]', '["help", "  "]'), "intents.help.keywords.en[1]", "is empty"),
        (('["help", "safe"]', '["help", "*"]'), "intents.help.keywords.en[1]", "is empty"),
        (
            ('["help", "safe"]', '["help", "he*lp"]'),
            "intents.help.keywords.en[1]",
            "only at the end",
        ),
        (('{ en = ["help", "safe"] }', '"help"'), "intents.help.keywords", "must be a table"),
        (
            ('{ en = ["help", "safe"] }', '{ en = "help" }'),
            "intents.help.keywords.en",
            "list of strings",
        ),
        (("priority = 2", 'priority = "2"'), "intents.help.priority", "must be an integer"),
        (("priority = 2", "priority = true"), "intents.help.priority", "got a boolean"),
        (
            ("priority = 2", "priority = 1"),
            "intents.help.priority",
            "also the priority of 'shelter'",
        ),
        (("priority = 2", "priority = 2\nkeyword = []"), "intents.help.keyword", "unknown key"),
        (
            ("priority = 2", "priority = 2\nreply_ids = ['SHELTER']"),
            "intents.help.reply_ids",
            "already a reply id of 'shelter'",
        ),
        (
            ("priority = 2", "priority = 2\nexclude = { en = ['x*'] }"),
            "intents.help.exclude",
            "take no '*'",
        ),
        (("version = 1", "version = 2"), "version", "must be 1"),
        (("version = 1", "version = 1.0"), "version", "must be 1"),
        (("version = 1", "version = 1\nintent = 3"), "intent", "unknown key"),
        (
            ('words = ["start"]', 'words = ["start", "STOP!"]'),
            "opt_in.words",
            "also listed in opt_out.words",
        ),
        (('words = ["start"]', "words = []"), "opt_in.words", "at least one word"),
        (('words = ["start"]', 'words = ["start*"]'), "opt_in.words[0]", "take no '*'"),
        (('words = ["start"]', 'wordz = ["start"]'), "opt_in.wordz", "unknown key"),
        (
            ('location = "shelter"', 'location = "shelters"'),
            "message_types.location",
            "unknown intent 'shelters'",
        ),
        (("priority = 2", 'priority = 2\nhandoff = "Agents"'), "intents.help.handoff", "team"),
        (("priority = 2", 'priority = 2\nhandoff = "a.b"'), "intents.help.handoff", "'a.b'"),
        (("priority = 2", 'priority = 2\nhandoff = "#"'), "intents.help.handoff", "team"),
        (("priority = 2", 'priority = 2\nhandoff = ""'), "intents.help.handoff", "team"),
        (("priority = 2", "priority = 2\nhandoff = 3"), "intents.help.handoff", "got 3"),
    ],
)
def test_invalid_rules_name_the_file_and_key(
    tmp_path: Path, change: tuple[str, str], key: str, problem: str
) -> None:
    old, new = change
    assert old in MINIMAL_RULES
    path = write_rules(tmp_path, MINIMAL_RULES.replace(old, new, 1))

    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message_text = str(caught.value)
    assert message_text.startswith(f"{path}: {key}: "), message_text
    assert problem in message_text


def test_missing_tables(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r": opt_out: must be a table, got nothing"):
        load_rules(write_rules(tmp_path, "version = 1\n"))
    with pytest.raises(RulesError, match=r": intents: must be a table"):
        load_rules(write_rules(tmp_path, 'version = 1\nopt_out.words=["a"]\nopt_in.words=["b"]\n'))


def test_intent_needs_keywords_or_reply_ids(tmp_path: Path) -> None:
    path = write_rules(tmp_path, MINIMAL_RULES + "\n[intents.voting]\npriority = 3\n")

    with pytest.raises(RulesError, match=r": intents\.voting: has neither keywords nor reply_ids"):
        load_rules(path)
