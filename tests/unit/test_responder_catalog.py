"""The responder's content catalog: the packaged file, fallbacks, validation and send bodies."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from civicline.responder.catalog import (
    MAX_TEXT_BODY,
    NO_REPLY_INTENTS,
    REPLY_INTENTS,
    Button,
    Catalog,
    CatalogError,
    Place,
    Reply,
    Row,
    Section,
    Template,
    choose_away,
    choose_reply,
    choose_template,
    load_catalog,
    to_graph_message,
)
from civicline.router.core import InboundMessage
from civicline.router.rules import KEYWORD_INTENTS, classify, load_rules

EXPECTED_INTENTS = (
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
    "unknown",
)
LANGUAGES = ("ko", "ja", "en")
# What a citizen gets for each service: menus where they tap, the nearest shelter on a map,
# plain text where buttons would add nothing (or, for abuse reports, could put them at risk).
EXPECTED_TYPES = {
    "voting": "text",
    "shelter": "location",
    "health": "buttons",
    "food_aid": "buttons",
    "passport": "text",
    "report_abuse": "text",
    "office_hours": "buttons",
    "help": "list",
    "subscribe": "text",
    "unsubscribe": "text",
    "opt_out": "text",
    "opt_in": "text",
    "unknown": "list",
}
KST = timedelta(hours=9)


@pytest.fixture(scope="module")
def packaged() -> Catalog:
    return load_catalog()


def minimal_catalog(
    *,
    default_language: str = "en",
    skip: str | None = None,
    skip_template: str | None = None,
    extra: str = "",
) -> str:
    """A valid catalog with one short English reply and template per intent, plus `extra`."""
    lines = ["version = 1", f'default_language = "{default_language}"']
    for intent in EXPECTED_INTENTS:
        if intent != skip:
            lines += [f"[replies.{intent}.en]", 'type = "text"', f'body = "{intent} reply"']
        if intent != skip_template:
            lines += [f"[templates.{intent}.en]", f'name = "{intent}_info"', 'language = "en_US"']
    return "\n".join(lines) + "\n" + extra


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_catalog_error(path: Path, *fragments: str) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def entry(tmp_path: Path, body: str, *, intent: str = "voting", language: str = "ko") -> Reply:
    """Load a minimal catalog plus `[replies.<intent>.<language>]` with `body` as its fields."""
    extra = f"[replies.{intent}.{language}]\n{body}\n"
    return load_catalog(write(tmp_path, minimal_catalog(extra=extra))).replies[intent][language]


def refused(tmp_path: Path, body: str, *fragments: str) -> None:
    path = write(tmp_path, minimal_catalog(extra=f"[replies.voting.ko]\n{body}\n"))
    assert_catalog_error(path, *fragments)


# --- the packaged catalog ---------------------------------------------------------------------


def test_reply_intents_match_the_event_contract() -> None:
    assert tuple(REPLY_INTENTS) == EXPECTED_INTENTS
    assert "reaction" in NO_REPLY_INTENTS


def test_packaged_catalog_loads(packaged: Catalog) -> None:
    assert packaged.version == 1
    assert packaged.default_language == "en"
    assert packaged.source.endswith("catalog.toml")
    assert "reaction" not in packaged.replies
    assert packaged.office is not None
    assert packaged.office.zone.key == "Asia/Seoul"


def test_packaged_catalog_loads_from_an_explicit_path(packaged: Catalog) -> None:
    path = Path(packaged.source)
    assert load_catalog(path).replies == packaged.replies
    assert load_catalog(str(path)).templates == packaged.templates


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("intent", EXPECTED_INTENTS)
def test_every_intent_has_a_reply_and_a_template_in_every_language(
    packaged: Catalog, intent: str, language: str
) -> None:
    reply = packaged.replies[intent][language]
    assert (reply.intent, reply.language, reply.type) == (intent, language, EXPECTED_TYPES[intent])
    assert reply.body == reply.body.strip()
    assert 0 < len(reply.body) <= MAX_TEXT_BODY
    template = packaged.templates[intent][language]
    assert template.type == "template"
    assert template.template is not None
    assert template.template.language == {"en": "en_US", "ko": "ko", "ja": "ja"}[language]


@pytest.mark.parametrize("intent", EXPECTED_INTENTS)
def test_a_template_has_one_name_across_its_translations(packaged: Catalog, intent: str) -> None:
    names = {r.template.name for r in packaged.templates[intent].values() if r.template}
    assert len(names) == 1


@pytest.mark.parametrize("language", LANGUAGES)
def test_opt_out_says_how_to_resume(packaged: Catalog, language: str) -> None:
    resume_word = {"en": "START", "ko": "시작", "ja": "開始"}[language]
    assert resume_word in packaged.replies["opt_out"][language].body


@pytest.mark.parametrize("language", LANGUAGES)
def test_urgent_and_safety_replies_point_to_the_emergency_number(
    packaged: Catalog, language: str
) -> None:
    emergency = {"en": "emergency number", "ko": "긴급 신고 번호", "ja": "緊急通報番号"}[language]
    for intent in ("report_abuse", "shelter", "health", "help", "unknown"):
        reply = packaged.replies[intent][language]
        assert emergency in reply.body + (reply.footer or ""), intent


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_abuse_reply_says_a_person_will_answer(packaged: Catalog, language: str) -> None:
    person = {"en": "caseworker will contact you", "ko": "상담원이", "ja": "相談員が"}[language]
    assert person in packaged.replies["report_abuse"][language].body


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("intent", ["help", "unknown"])
def test_help_and_unknown_are_the_menu_of_every_service(
    packaged: Catalog, intent: str, language: str
) -> None:
    reply = packaged.replies[intent][language]
    rows = [row.id for section in reply.sections for row in section.rows]
    assert rows == [f"menu_{name}" for name in MENU_ORDER] + ["menu_subscribe", "menu_opt_out"]
    assert reply.list_button
    assert all(row.description for section in reply.sections for row in section.rows)


MENU_ORDER = (
    "voting",
    "shelter",
    "health",
    "food_aid",
    "passport",
    "report_abuse",
    "office_hours",
)


def test_the_menu_lists_every_keyword_intent_but_help() -> None:
    assert set(MENU_ORDER) == KEYWORD_INTENTS - {"help"}


def tapped(reply_id: str) -> InboundMessage:
    return InboundMessage(
        wamid="wamid.tap",
        phone_number_id="106512349876543",
        display_phone_number=None,
        waba_id=None,
        sender="821052347781",
        sender_user_id=None,
        profile_name=None,
        timestamp=datetime(2026, 7, 20, tzinfo=UTC),
        type="interactive",
        text="(the title the citizen tapped)",
        reply_id=reply_id,
        context_id=None,
        content={},
        errors=(),
    )


def test_every_id_a_citizen_can_tap_is_classified_as_what_it_promises(packaged: Catalog) -> None:
    rules = load_rules()
    ids = packaged.reply_ids()
    assert ids == {f"menu_{name}" for name in (*MENU_ORDER, "help", "subscribe", "opt_out")}
    for reply_id in ids:
        assert classify(tapped(reply_id), rules).intent == reply_id.removeprefix("menu_")


def test_shelters_are_the_same_places_in_every_language(packaged: Catalog) -> None:
    coordinates = {
        language: [(p.latitude, p.longitude) for p in packaged.replies["shelter"][language].places]
        for language in LANGUAGES
    }
    assert len(coordinates["en"]) >= 3
    assert coordinates["ko"] == coordinates["ja"] == coordinates["en"]
    for language in LANGUAGES:
        assert all(p.name and p.address for p in packaged.replies["shelter"][language].places)


def test_korean_and_japanese_replies_are_in_their_own_script(packaged: Catalog) -> None:
    assert packaged.office is not None
    entries = [packaged.replies[intent] for intent in EXPECTED_INTENTS] + [packaged.office.away]
    for by_language in entries:
        assert any("\uac00" <= char <= "\ud7a3" for char in by_language["ko"].body)
        assert any("\u3040" <= char <= "\u30ff" for char in by_language["ja"].body)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_away_notice_gives_the_hours_and_the_office(packaged: Catalog, language: str) -> None:
    away = choose_away(packaged, language)
    assert away is not None
    assert away.type == "text"
    assert "9:00" in away.body
    assert "18:00" in away.body
    assert {"en": "Example-ro", "ko": "예시로", "ja": "例示路"}[language] in away.body


# --- office hours -----------------------------------------------------------------------------


def seoul(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A Korea Standard Time wall-clock moment, expressed in UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC) - KST


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        (seoul(2026, 7, 20, 9, 0), True),  # Monday, opening minute
        (seoul(2026, 7, 20, 8, 59), False),
        (seoul(2026, 7, 20, 17, 59), True),
        (seoul(2026, 7, 20, 18, 0), False),  # closing time is closed
        (seoul(2026, 7, 24, 12, 0), True),  # Friday
        (seoul(2026, 7, 25, 12, 0), False),  # Saturday
        (seoul(2026, 7, 26, 12, 0), False),  # Sunday
        (seoul(2026, 12, 25, 12, 0), False),  # Christmas, a Friday: closed date
        (seoul(2026, 10, 9, 10, 0), False),  # Hangul Day
        # 01:00 UTC on Monday is 10:00 in Seoul: the office's own clock decides
        (datetime(2026, 7, 20, 1, 0, tzinfo=UTC), True),
        (datetime(2026, 7, 20, 10, 0), False),  # naive means UTC: 19:00 in Seoul
    ],
)
def test_is_open_in_the_offices_time_zone(packaged: Catalog, moment: datetime, open_: bool) -> None:
    assert packaged.office is not None
    assert packaged.office.is_open(moment) is open_


def test_office_hours_follow_daylight_saving_and_split_days(tmp_path: Path) -> None:
    office = """
[office]
timezone = "Europe/London"
closed_dates = ["2026-12-24"]
[office.hours]
mon = ["09:00-12:30", "13:30-17:00"]
sat = ["10:00-24:00"]
[office.away.en]
type = "text"
body = "closed"
"""
    catalog = load_catalog(write(tmp_path, minimal_catalog(extra=office)))
    assert catalog.office is not None
    is_open = catalog.office.is_open
    # 2026-07-20 is a Monday in British Summer Time (UTC+1); 2026-01-19 in GMT.
    assert is_open(datetime(2026, 7, 20, 8, 0, tzinfo=UTC))  # 09:00 BST
    assert not is_open(datetime(2026, 1, 19, 8, 0, tzinfo=UTC))  # 08:00 GMT
    assert not is_open(datetime(2026, 7, 20, 12, 0, tzinfo=UTC))  # lunch, 13:00 BST
    assert is_open(datetime(2026, 7, 20, 12, 30, tzinfo=UTC))  # 13:30 BST
    assert is_open(datetime(2026, 7, 25, 22, 59, tzinfo=UTC))  # Saturday 23:59 BST
    assert not is_open(datetime(2026, 7, 21, 10, 0, tzinfo=UTC))  # Tuesday: no hours
    assert choose_away(catalog, "ko") == catalog.office.away["en"]


def test_a_catalog_without_office_hours_has_no_away_notice(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, minimal_catalog()))
    assert catalog.office is None
    assert choose_away(catalog, "en") is None


# --- choosing a reply -------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_choose_reply_uses_the_citizens_language(packaged: Catalog, language: str) -> None:
    reply = choose_reply(packaged, "voting", language)
    assert reply is packaged.replies["voting"][language]


def test_choose_reply_falls_back_to_the_default_language(packaged: Catalog) -> None:
    reply = choose_reply(packaged, "shelter", "es")
    assert reply is packaged.replies["shelter"]["en"]
    assert reply.language == "en"


@pytest.mark.parametrize("language", ["ko-KR", "ko_KR", "KO", " ko "])
def test_choose_reply_accepts_regional_and_upper_case_tags(
    packaged: Catalog, language: str
) -> None:
    assert choose_reply(packaged, "passport", language).language == "ko"


@pytest.mark.parametrize("language", ["", "-", "zz-ZZ"])
def test_choose_reply_falls_back_on_a_useless_language(packaged: Catalog, language: str) -> None:
    assert choose_reply(packaged, "help", language).language == "en"


@pytest.mark.parametrize("intent", ["lottery", "reaction", ""])
def test_choose_reply_answers_an_unknown_intent_with_the_unknown_entry(
    packaged: Catalog, intent: str
) -> None:
    reply = choose_reply(packaged, intent, "ja")
    assert reply is packaged.replies["unknown"]["ja"]
    assert reply.intent == "unknown"
    assert choose_template(packaged, intent, "ja") is packaged.templates["unknown"]["ja"]


def test_choose_template_falls_back_like_choose_reply(packaged: Catalog) -> None:
    assert choose_template(packaged, "voting", "ko_KR") is packaged.templates["voting"]["ko"]
    assert choose_template(packaged, "voting", "es") is packaged.templates["voting"]["en"]


def test_choose_reply_prefers_a_regional_entry_when_the_catalog_has_one(tmp_path: Path) -> None:
    extra = '[replies.voting.pt-br]\ntype = "text"\nbody = "votação"\n'
    catalog = load_catalog(write(tmp_path, minimal_catalog(extra=extra)))
    assert choose_reply(catalog, "voting", "pt_BR").body == "votação"
    assert choose_reply(catalog, "voting", "pt").language == "en"


def test_catalog_and_reply_are_immutable(packaged: Catalog) -> None:
    reply = packaged.replies["help"]["en"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.body = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        packaged.default_language = "ko"  # type: ignore[misc]
    with pytest.raises(TypeError):
        packaged.replies["help"]["en"] = reply  # type: ignore[index]
    with pytest.raises(TypeError):
        packaged.templates["help"]["en"] = reply  # type: ignore[index]


# --- validation: structure --------------------------------------------------------------------


def test_a_minimal_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, minimal_catalog()))
    assert catalog.languages("voting") == {"en"}
    assert choose_reply(catalog, "voting", "ko").body == "voting reply"
    assert choose_template(catalog, "voting", "ko").template == Template("voting_info", "en_US")


def test_body_whitespace_is_trimmed(tmp_path: Path) -> None:
    reply = entry(tmp_path, 'type = "text"\nbody = """\n  투표 안내입니다.\n\n"""')
    assert reply.body == "투표 안내입니다."


def test_missing_default_language_entry_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_catalog(skip="food_aid"))
    assert_catalog_error(path, "replies.food_aid.en", "default language 'en'")


def test_default_language_must_cover_every_intent(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_catalog(default_language="ko"))
    assert_catalog_error(path, "replies.voting.ko", "replies.unknown.ko")


def test_every_intent_needs_a_template_in_the_default_language(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_catalog(skip_template="shelter"))
    assert_catalog_error(path, "missing templates.shelter.en")


def test_a_catalog_without_templates_is_refused(tmp_path: Path) -> None:
    text = "\n".join(line for line in minimal_catalog().splitlines() if "templates" not in line)
    text = "\n".join(
        line for line in text.splitlines() if not line.startswith(("name =", "language ="))
    )
    assert_catalog_error(write(tmp_path, text), "templates is missing", "24-hour window")


def test_unknown_intent_is_refused(tmp_path: Path) -> None:
    extra = '[replies.lottery.en]\ntype = "text"\nbody = "no"\n'
    assert_catalog_error(
        write(tmp_path, minimal_catalog(extra=extra)), "replies.lottery", "lottery"
    )
    extra = '[templates.lottery.en]\nname = "x"\nlanguage = "en"\n'
    assert_catalog_error(
        write(tmp_path, minimal_catalog(extra=extra)), "templates.lottery", "unknown intent"
    )


def test_reaction_entry_is_refused(tmp_path: Path) -> None:
    extra = '[replies.reaction.en]\ntype = "text"\nbody = "thanks"\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.reaction", "never gets a reply")


@pytest.mark.parametrize("reply_type", ["interactive", "video", "TEXT", "button"])
def test_unknown_type_is_refused(tmp_path: Path, reply_type: str) -> None:
    refused(
        tmp_path,
        f'type = "{reply_type}"\nbody = "투표"',
        "replies.voting.ko.type",
        repr(reply_type),
        "unknown reply type",
    )


def test_missing_type_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, 'body = "투표"', "replies.voting.ko.type")


@pytest.mark.parametrize("body", ['""', '"   \\n  "'])
def test_empty_body_is_refused(tmp_path: Path, body: str) -> None:
    refused(tmp_path, f'type = "text"\nbody = {body}', "replies.voting.ko.body", "empty")


def test_missing_body_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, 'type = "text"', "replies.voting.ko.body", "missing")


def test_body_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    reply = entry(tmp_path, f'type = "text"\nbody = "{"あ" * MAX_TEXT_BODY}"')
    assert len(reply.body) == MAX_TEXT_BODY


def test_over_long_body_is_refused(tmp_path: Path) -> None:
    body = f'type = "text"\nbody = "{"あ" * (MAX_TEXT_BODY + 1)}"'
    refused(tmp_path, body, "replies.voting.ko.body", "4097", "4096")


def test_emoji_count_twice_towards_the_limit(tmp_path: Path) -> None:
    body = "a" * (MAX_TEXT_BODY - 1) + "\U0001f44d"
    refused(tmp_path, f'type = "text"\nbody = "{body}"', "replies.voting.ko.body", "4097")


def test_unexpected_field_in_an_entry_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, 'type = "text"\nbody = "투표"\nbuttons = []', "replies.voting.ko.buttons")


def test_bad_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'version = 1\n[replies.voting.en\ntype = "text"\n')
    assert_catalog_error(path, "not valid TOML", "line 2")


def test_duplicate_entry_is_bad_toml(tmp_path: Path) -> None:
    extra = '[replies.voting.en]\ntype = "text"\nbody = "again"\n'
    assert_catalog_error(write(tmp_path, minimal_catalog(extra=extra)), "not valid TOML")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_bytes(minimal_catalog().encode("utf-8") + b"# \xff\n")
    assert_catalog_error(path, "UTF-8")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert_catalog_error(tmp_path / "absent.toml", "catalog not found")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (minimal_catalog().replace("version = 1", "version = 2"), "version is 2"),
        (minimal_catalog().replace("version = 1", "version = true"), "version is True"),
        (minimal_catalog().replace("version = 1\n", ""), "version is None"),
        (minimal_catalog(default_language="EN"), "default_language is 'EN'"),
        ('owner = "x"\n' + minimal_catalog(), "unexpected key(s) owner"),
        ('version = 1\ndefault_language = "en"\n', "replies is missing"),
        ('version = 1\ndefault_language = "en"\nreplies = "x"\n', "replies is missing"),
        (minimal_catalog(extra='[replies.voting.Korean]\ntype = "text"\nbody = "x"\n'), "Korean"),
        (minimal_catalog(extra="[replies.voting]\nko = 3\n"), "replies.voting.ko must be"),
    ],
)
def test_structural_errors_are_named(tmp_path: Path, text: str, fragment: str) -> None:
    assert_catalog_error(write(tmp_path, text), fragment)


# --- validation: reply buttons ----------------------------------------------------------------

BUTTONS = 'type = "buttons"\nbody = "여권"\n'


def test_a_buttons_entry_loads(tmp_path: Path) -> None:
    reply = entry(
        tmp_path,
        BUTTONS + 'header = "여권 안내"\nfooter = "긴급 112"\n'
        'buttons = [{ id = "menu_passport", title = "여권" },\n'
        '{ id = "menu_help", title = "메뉴" }]',
    )
    assert reply.buttons == (Button("menu_passport", "여권"), Button("menu_help", "메뉴"))
    assert (reply.header, reply.footer) == ("여권 안내", "긴급 112")
    assert reply.reply_ids() == ("menu_passport", "menu_help")


def button_list(*titles: str) -> str:
    items = ", ".join(f'{{ id = "b{i}", title = "{t}" }}' for i, t in enumerate(titles))
    return f"buttons = [{items}]"


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        (button_list("a", "b", "c", "d"), ("replies.voting.ko.buttons", "4 items", "1 to 3")),
        ("buttons = []", ("replies.voting.ko.buttons", "0 items")),
        ("", ("replies.voting.ko.buttons must be an array",)),
        (button_list("x" * 21), ("buttons[0].title", "21", "20")),
        (button_list("가" * 21), ("buttons[0].title", "21")),
        (button_list("same", "same"), ("buttons", "repeat a title")),
        ('buttons = [{ id = "a", title = "x" }, { id = "a", title = "y" }]', ("repeat a id",)),
        (f'buttons = [{{ id = "{"i" * 257}", title = "x" }}]', ("buttons[0].id", "257")),
        ('buttons = [{ id = " a", title = "x" }]', ("buttons[0].id", "whitespace")),
        ('buttons = [{ title = "x" }]', ("buttons[0].id", "missing")),
        ('buttons = [{ id = "a", title = "x", url = "y" }]', ("buttons[0].url",)),
        ('buttons = ["a"]', ("buttons[0] must be a table",)),
        (button_list("a") + f'\nheader = "{"h" * 61}"', ("replies.voting.ko.header", "61")),
        (button_list("a") + f'\nfooter = "{"f" * 61}"', ("replies.voting.ko.footer", "61")),
    ],
)
def test_buttons_limits(tmp_path: Path, fields: str, fragments: tuple[str, ...]) -> None:
    refused(tmp_path, BUTTONS + fields, *fragments)


def test_a_buttons_body_is_limited_to_1024(tmp_path: Path) -> None:
    body = f'type = "buttons"\nbody = "{"b" * 1025}"\n{button_list("a")}'
    refused(tmp_path, body, "replies.voting.ko.body", "1025", "1024")
    assert entry(tmp_path, f'type = "buttons"\nbody = "{"b" * 1024}"\n{button_list("a")}')


# --- validation: lists ------------------------------------------------------------------------


def list_entry(*sections: tuple[str | None, int], button: str = "메뉴") -> str:
    lines = ['type = "list"', 'body = "무엇을 도와드릴까요?"', f'button = "{button}"']
    count = 0
    for title, rows in sections:
        lines.append("[[replies.voting.ko.sections]]")
        if title is not None:
            lines.append(f'title = "{title}"')
        items = []
        for _ in range(rows):
            items.append(f'{{ id = "r{count}", title = "항목 {count}" }}')
            count += 1
        lines.append(f"rows = [{', '.join(items)}]")
    return "\n".join(lines)


def test_a_list_entry_loads(tmp_path: Path) -> None:
    reply = entry(tmp_path, list_entry(("서비스", 9), ("설정", 1)))
    assert reply.list_button == "메뉴"
    assert [s.title for s in reply.sections] == ["서비스", "설정"]
    assert len(reply.reply_ids()) == 10
    single = entry(tmp_path, list_entry((None, 2)))
    assert single.sections == (Section(None, (Row("r0", "항목 0"), Row("r1", "항목 1"))),)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (list_entry(("a", 6), ("b", 5)), ("replies.voting.ko.sections", "11 rows", "10")),
        (list_entry((None, 11)), ("sections[0].rows", "11 items")),
        (list_entry(*[(f"s{i}", 1) for i in range(11)]), ("sections", "11 items")),
        (list_entry(("a", 1), (None, 1)), ("sections[1].title", "missing")),
        (list_entry(("x" * 25, 1)), ("sections[0].title", "25", "24")),
        (list_entry((None, 1), button="x" * 21), ("replies.voting.ko.button", "21")),
        (list_entry((None, 1)).replace('button = "메뉴"\n', ""), ("ko.button", "missing")),
        (
            list_entry((None, 1)).replace('title = "항목 0"', f'title = "{"t" * 25}"'),
            ("rows[0].title", "25", "24"),
        ),
        (
            list_entry((None, 1)).replace('"항목 0"', f'"t", description = "{"d" * 73}"'),
            ("rows[0].description", "73", "72"),
        ),
        (
            list_entry((None, 1)).replace('id = "r0"', f'id = "{"i" * 201}"'),
            ("rows[0].id", "201", "200"),
        ),
        (list_entry(("a", 1), ("b", 1)).replace('"r1"', '"r0"'), ("repeat a row id",)),
        ('type = "list"\nbody = "x"\nbutton = "y"\nsections = []', ("sections", "0 items")),
    ],
)  # fmt: skip
def test_list_limits(tmp_path: Path, body: str, fragments: tuple[str, ...]) -> None:
    refused(tmp_path, body, *fragments)


# --- validation: locations and templates ------------------------------------------------------


def test_a_single_place_loads(tmp_path: Path) -> None:
    reply = entry(
        tmp_path,
        'type = "location"\nname = "구청"\naddress = "종로구"\nlatitude = 37.5\nlongitude = 127',
    )
    assert reply.places == (Place(37.5, 127.0, "구청", "종로구"),)
    assert reply.body == ""


def test_a_list_of_places_loads_with_a_text_for_citizens_who_share_none(tmp_path: Path) -> None:
    reply = entry(
        tmp_path,
        'type = "location"\nbody = "위치를 보내 주세요"\n'
        "[[replies.voting.ko.locations]]\nlatitude = 37.5\nlongitude = 127.0\n"
        '[[replies.voting.ko.locations]]\nname = "B"\nlatitude = -33.9\nlongitude = 151.2',
    )
    assert reply.places == (Place(37.5, 127.0), Place(-33.9, 151.2, "B"))
    assert reply.body == "위치를 보내 주세요"


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        ("latitude = 91\nlongitude = 0", ("replies.voting.ko.latitude", "-90 to 90")),
        ("latitude = 0\nlongitude = -180.5", ("replies.voting.ko.longitude", "-180 to 180")),
        ('latitude = "37.5"\nlongitude = 127', ("latitude must be a number",)),
        ("latitude = true\nlongitude = 127", ("latitude must be a number",)),
        ("latitude = nan\nlongitude = 127", ("latitude", "nan")),
        ("longitude = 127", ("latitude must be a number",)),
        ("locations = []", ("locations", "0 items")),
        (
            "latitude = 1\nlongitude = 1\n[[replies.voting.ko.locations]]\nlatitude = 1\n"
            "longitude = 1",
            ("both `locations` and a single place",),
        ),
        (
            "[[replies.voting.ko.locations]]\nlatitude = 1\nlongitude = 1\ncity = 'x'",
            ("locations[0].city",),
        ),
    ],
)
def test_location_rules(tmp_path: Path, fields: str, fragments: tuple[str, ...]) -> None:
    refused(tmp_path, 'type = "location"\n' + fields, *fragments)


def test_a_template_reply_loads(tmp_path: Path) -> None:
    reply = entry(
        tmp_path,
        'type = "template"\nname = "polling_place_reminder"\nlanguage = "ko"\n'
        'parameters = ["종로구", "7월 30일"]',
    )
    assert reply.template == Template("polling_place_reminder", "ko", ("종로구", "7월 30일"))


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        ('name = "Polling"\nlanguage = "ko"', ("replies.voting.ko.name", "lower-case")),
        ('name = "p-r"\nlanguage = "ko"', ("replies.voting.ko.name",)),
        ('language = "ko"', ("replies.voting.ko.name", "missing")),
        ('name = "p"\nlanguage = "ko-KR"', ("replies.voting.ko.language", "en_US")),
        ('name = "p"\nlanguage = "EN"', ("replies.voting.ko.language",)),
        ('name = "p"', ("replies.voting.ko.language",)),
        ('name = "p"\nlanguage = "ko"\nparameters = "x"', ("parameters must be an array",)),
        ('name = "p"\nlanguage = "ko"\nparameters = [""]', ("parameters[0]", "non-empty")),
        ('name = "p"\nlanguage = "ko"\nparameters = [3]', ("parameters[0]",)),
        ('name = "p"\nlanguage = "ko"\nparameters = ["a\\nb"]', ("parameters[0]", "newline")),
        ('name = "p"\nlanguage = "ko"\nparameters = ["a\\tb"]', ("parameters[0]", "tab")),
        ('name = "p"\nlanguage = "ko"\nparameters = ["a     b"]', ("more than 4 spaces",)),
        ('name = "p"\nlanguage = "ko"\nbody = "x"', ("replies.voting.ko.body",)),
    ],
)
def test_template_rules(tmp_path: Path, fields: str, fragments: tuple[str, ...]) -> None:
    refused(tmp_path, 'type = "template"\n' + fields, *fragments)


def test_four_spaces_in_a_template_parameter_are_allowed(tmp_path: Path) -> None:
    reply = entry(tmp_path, 'type = "template"\nname = "p"\nlanguage = "ko"\nparameters=["a    b"]')
    assert reply.template is not None
    assert reply.template.parameters == ("a    b",)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ('[templates.voting.ko]\nname = "v"\nlanguage = "ko"\nextra = 1\n', ("voting.ko.extra",)),
        ('[templates.voting.ko]\ntype = "text"\nname = "v"\nlanguage = "ko"\n', ("must be",)),
        ("[templates.voting]\nko = 1\n", ("templates.voting.ko must be a table",)),
        ('[templates.voting.ko]\nname = "v"\nlanguage = "ko_kr"\n', ("templates.voting.ko",)),
    ],
)
def test_templates_table_rules(tmp_path: Path, extra: str, fragments: tuple[str, ...]) -> None:
    assert_catalog_error(write(tmp_path, minimal_catalog(extra=extra)), *fragments)


# --- validation: office hours -----------------------------------------------------------------

OFFICE = """
[office]
timezone = "Asia/Seoul"
[office.hours]
mon = ["09:00-18:00"]
[office.away.en]
type = "text"
body = "closed"
"""


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (('"Asia/Seoul"', '"Mars/Olympus"'), ("office.timezone", "Mars/Olympus", "IANA")),
        (('timezone = "Asia/Seoul"\n', ""), ("office.timezone", "missing")),
        (('"09:00-18:00"', '"9-18"'), ("office.hours.mon[0]", "HH:MM-HH:MM")),
        (('"09:00-18:00"', '"18:00-09:00"'), ("office.hours.mon[0]", "start < end")),
        (('"09:00-18:00"', '"09:00-24:01"'), ("office.hours.mon[0]",)),
        (('"09:00-18:00"', '"24:00-24:00"'), ("office.hours.mon[0]",)),
        (("mon = ", "monday = "), ("office.hours.monday",)),
        (('mon = ["09:00-18:00"]', 'mon = "09:00-18:00"'), ("office.hours.mon", "array")),
        (("[office.away.en]", "[office.away.ko]"), ("missing office.away.en",)),
        (('type = "text"\nbody = "closed"', 'type = "template"'), ("office.away.en.type",)),
        (("[office]\n", '[office]\nclosed_dates = ["25 Dec"]\n'), ("closed_dates[0]",)),
        (("[office]\n", "[office]\nclosed_dates = [1]\n"), ("closed_dates[0]",)),
        (("[office]\n", "[office]\nclosed_dates = 2026-12-25T10:00:00\n"), ("closed_dates",)),
        (("[office]\n", "[office]\nlocation = 1\n"), ("office.location",)),
    ],
)
def test_office_rules(tmp_path: Path, change: tuple[str, str], fragments: tuple[str, ...]) -> None:
    old, new = change
    assert old in OFFICE
    path = write(tmp_path, minimal_catalog(extra=OFFICE.replace(old, new, 1)))
    assert_catalog_error(path, *fragments)


def test_closed_dates_take_toml_dates_and_iso_strings(tmp_path: Path) -> None:
    office = OFFICE.replace("[office]\n", '[office]\nclosed_dates = [2026-12-28, "2027-01-04"]\n')
    catalog = load_catalog(write(tmp_path, minimal_catalog(extra=office)))
    assert catalog.office is not None
    assert not catalog.office.is_open(datetime(2026, 12, 28, 1, 0, tzinfo=UTC))  # a Monday
    assert not catalog.office.is_open(datetime(2027, 1, 4, 1, 0, tzinfo=UTC))
    assert catalog.office.is_open(datetime(2027, 1, 11, 1, 0, tzinfo=UTC))


# --- the Graph API send body (reference §5) ---------------------------------------------------

CITIZEN = "821012345678"


def reply(**fields: Any) -> Reply:
    return Reply(intent="help", language="en", **fields)


def test_text_without_context() -> None:
    assert to_graph_message(
        reply(type="text", body="How can we help?"), to=CITIZEN, reply_to=None
    ) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "text",
        "text": {"body": "How can we help?", "preview_url": False},
    }


def test_text_quotes_the_citizens_message(packaged: Catalog) -> None:
    voting = choose_reply(packaged, "voting", "ko")
    message = to_graph_message(voting, to=CITIZEN, reply_to="wamid.HBgM")
    assert message["context"] == {"message_id": "wamid.HBgM"}
    assert message["text"] == {"body": voting.body, "preview_url": False}
    assert list(message) == [
        "messaging_product",
        "recipient_type",
        "to",
        "type",
        "text",
        "context",
    ]


def test_a_business_scoped_user_id_is_sent_as_recipient() -> None:
    message = to_graph_message(
        reply(type="text", body="hi"), to="US.13491208655302741918", reply_to=None, by_user_id=True
    )
    assert message["recipient"] == "US.13491208655302741918"
    assert "to" not in message


def test_reply_buttons() -> None:
    buttons = reply(
        type="buttons",
        body="Food assistance …",
        header="Food aid",
        footer="Call 112 in an emergency",
        buttons=(Button("menu_office_hours", "Office hours"), Button("menu_help", "Main menu")),
    )
    assert to_graph_message(buttons, to=CITIZEN, reply_to="wamid.IN") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "text", "text": "Food aid"},
            "body": {"text": "Food assistance …"},
            "footer": {"text": "Call 112 in an emergency"},
            "action": {
                "buttons": [
                    {
                        "type": "reply",
                        "reply": {"id": "menu_office_hours", "title": "Office hours"},
                    },
                    {"type": "reply", "reply": {"id": "menu_help", "title": "Main menu"}},
                ]
            },
        },
        "context": {"message_id": "wamid.IN"},
    }


def test_reply_buttons_without_header_or_footer() -> None:
    buttons = reply(type="buttons", body="b", buttons=(Button("menu_help", "Menu"),))
    interactive = to_graph_message(buttons, to=CITIZEN, reply_to=None)["interactive"]
    assert list(interactive) == ["type", "body", "action"]


def test_list() -> None:
    menu = reply(
        type="list",
        body="How can we help?",
        footer="In an emergency, call 112.",
        list_button="Choose a topic",
        sections=(
            Section("Services", (Row("menu_voting", "Voting", "Polling stations"),)),
            Section("Your messages", (Row("menu_opt_out", "Stop messages"),)),
        ),
    )
    assert to_graph_message(menu, to=CITIZEN, reply_to="wamid.IN")["interactive"] == {
        "type": "list",
        "body": {"text": "How can we help?"},
        "footer": {"text": "In an emergency, call 112."},
        "action": {
            "button": "Choose a topic",
            "sections": [
                {
                    "title": "Services",
                    "rows": [
                        {"id": "menu_voting", "title": "Voting", "description": "Polling stations"}
                    ],
                },
                {
                    "title": "Your messages",
                    "rows": [{"id": "menu_opt_out", "title": "Stop messages"}],
                },
            ],
        },
    }


def test_a_single_section_may_go_without_a_title() -> None:
    menu = reply(
        type="list", body="b", list_button="Open", sections=(Section(None, (Row("r", "R"),)),)
    )
    action = to_graph_message(menu, to=CITIZEN, reply_to=None)["interactive"]["action"]
    assert action["sections"] == [{"rows": [{"id": "r", "title": "R"}]}]


SHELTERS = (Place(37.57, 126.98, "Jongno", "1 Example-ro"), Place(37.51, 127.10, "Songpa"))


def test_location_sends_the_place_it_is_given() -> None:
    shelters = reply(type="location", body="Share your location", places=SHELTERS)
    message = to_graph_message(shelters, to=CITIZEN, reply_to="wamid.IN", place=SHELTERS[1])
    assert message == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "location",
        "location": {"latitude": 37.51, "longitude": 127.10, "name": "Songpa"},
        "context": {"message_id": "wamid.IN"},
    }


def test_location_without_a_place_sends_its_text_or_else_its_first_place() -> None:
    with_text = reply(type="location", body="Share your location", places=SHELTERS)
    message = to_graph_message(with_text, to=CITIZEN, reply_to=None)
    assert (message["type"], message["text"]) == (
        "text",
        {"body": "Share your location", "preview_url": False},
    )
    office = reply(type="location", places=SHELTERS[:1])
    assert to_graph_message(office, to=CITIZEN, reply_to=None)["location"] == {
        "latitude": 37.57,
        "longitude": 126.98,
        "name": "Jongno",
        "address": "1 Example-ro",
    }


def test_template_with_body_parameters() -> None:
    template = reply(
        type="template", template=Template("polling_place_reminder", "ko", ("종로구", "7월 30일"))
    )
    assert to_graph_message(template, to=CITIZEN, reply_to="wamid.IN") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "template",
        "template": {
            "name": "polling_place_reminder",
            "language": {"code": "ko"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "종로구"},
                        {"type": "text", "text": "7월 30일"},
                    ],
                }
            ],
        },
        "context": {"message_id": "wamid.IN"},
    }


def test_template_without_parameters_has_no_components() -> None:
    template = reply(type="template", template=Template("civicline_menu", "en_US"))
    assert to_graph_message(template, to=CITIZEN, reply_to=None)["template"] == {
        "name": "civicline_menu",
        "language": {"code": "en_US"},
    }


def test_to_graph_message_refuses_a_type_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="interactive"):
        to_graph_message(reply(type="interactive", body="menu"), to="1", reply_to=None)
    with pytest.raises(ValueError, match="template"):
        to_graph_message(reply(type="template"), to="1", reply_to=None)


# --- the README's worked example --------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(language: str) -> list[str]:
    section = README.read_text(encoding="utf-8").split("## The content catalog", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split(f"```{language}\n")[1:]]


def test_the_readme_worked_example_loads_and_sends_the_documented_body(tmp_path: Path) -> None:
    example = readme_blocks("toml")[1]
    rest = minimal_catalog().split("\n", 2)[2]  # every intent, minus version and language
    rest = rest.replace('[replies.shelter.en]\ntype = "text"\nbody = "shelter reply"\n', "")
    catalog = load_catalog(write(tmp_path, example + rest))
    assert catalog.office is not None

    food_aid = choose_reply(catalog, "food_aid", "ko")
    documented = json.loads(readme_blocks("json")[0])
    documented["context"]["message_id"] = "wamid.IN"
    assert to_graph_message(food_aid, to="821052347781", reply_to="wamid.IN") == documented
    assert [b.id for b in food_aid.buttons] == ["menu_office_hours", "menu_help"]

    # 20:00 on a Monday in Seoul: closed; a Gangnam location gets the Gangnam pin.
    assert not catalog.office.is_open(datetime(2026, 7, 20, 11, 0, tzinfo=UTC))
    assert catalog.office.is_open(datetime(2026, 7, 20, 1, 0, tzinfo=UTC))
    shelters = choose_reply(catalog, "shelter", "en")
    assert shelters.places[1].name == "Gangnam Civic Hall"
