"""The responder's content catalog: the packaged file, fallbacks, validation and the send body."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from civicline.responder.catalog import (
    MAX_TEXT_BODY,
    NO_REPLY_INTENTS,
    REPLY_INTENTS,
    Catalog,
    CatalogError,
    Reply,
    choose_reply,
    load_catalog,
    to_graph_message,
)

EXPECTED_INTENTS = (
    "voting",
    "shelter",
    "health",
    "food_aid",
    "passport",
    "report_abuse",
    "office_hours",
    "help",
    "opt_out",
    "opt_in",
    "unknown",
)
LANGUAGES = ("ko", "ja", "en")


@pytest.fixture(scope="module")
def packaged() -> Catalog:
    return load_catalog()


def minimal_catalog(
    *, default_language: str = "en", skip: str | None = None, extra: str = ""
) -> str:
    """A valid catalog with one short English reply per intent, minus `skip`, plus `extra`."""
    lines = ["version = 1", f'default_language = "{default_language}"']
    for intent in EXPECTED_INTENTS:
        if intent != skip:
            lines += [f"[replies.{intent}.en]", 'type = "text"', f'body = "{intent} reply"']
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
        assert fragment in message


# --- the packaged catalog ---------------------------------------------------------------------


def test_reply_intents_match_the_event_contract() -> None:
    assert tuple(REPLY_INTENTS) == EXPECTED_INTENTS
    assert "reaction" in NO_REPLY_INTENTS


def test_packaged_catalog_loads(packaged: Catalog) -> None:
    assert packaged.version == 1
    assert packaged.default_language == "en"
    assert packaged.source.endswith("catalog.toml")
    assert "reaction" not in packaged.replies


def test_packaged_catalog_loads_from_an_explicit_path(packaged: Catalog) -> None:
    path = Path(packaged.source)
    assert load_catalog(path).replies == packaged.replies
    assert load_catalog(str(path)).replies == packaged.replies


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("intent", EXPECTED_INTENTS)
def test_every_intent_has_a_text_reply_in_every_language(
    packaged: Catalog, intent: str, language: str
) -> None:
    reply = packaged.replies[intent][language]
    assert reply == Reply(intent=intent, language=language, type="text", body=reply.body)
    assert reply.body == reply.body.strip()
    assert 0 < len(reply.body) <= MAX_TEXT_BODY


@pytest.mark.parametrize("language", LANGUAGES)
def test_opt_out_says_how_to_resume(packaged: Catalog, language: str) -> None:
    resume_word = {"en": "START", "ko": "시작", "ja": "開始"}[language]
    assert resume_word in packaged.replies["opt_out"][language].body


@pytest.mark.parametrize("language", LANGUAGES)
def test_urgent_and_safety_replies_point_to_the_emergency_number(
    packaged: Catalog, language: str
) -> None:
    emergency = {"en": "emergency number", "ko": "긴급 신고 번호", "ja": "緊急通報番号"}[language]
    for intent in ("report_abuse", "shelter", "health"):
        assert emergency in packaged.replies[intent][language].body


@pytest.mark.parametrize("language", LANGUAGES)
def test_help_is_a_numbered_menu(packaged: Catalog, language: str) -> None:
    body = packaged.replies["help"][language].body
    for number in range(1, 8):
        assert f"\n{number}. " in body


def test_korean_and_japanese_replies_are_in_their_own_script(packaged: Catalog) -> None:
    for intent in EXPECTED_INTENTS:
        assert any("\uac00" <= char <= "\ud7a3" for char in packaged.replies[intent]["ko"].body)
        assert any("\u3040" <= char <= "\u30ff" for char in packaged.replies[intent]["ja"].body)


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


# --- validation -------------------------------------------------------------------------------


def test_a_minimal_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, minimal_catalog()))
    assert catalog.languages("voting") == {"en"}
    assert choose_reply(catalog, "voting", "ko").body == "voting reply"


def test_body_whitespace_is_trimmed(tmp_path: Path) -> None:
    extra = '[replies.voting.ko]\ntype = "text"\nbody = """\n  투표 안내입니다.\n\n"""\n'
    catalog = load_catalog(write(tmp_path, minimal_catalog(extra=extra)))
    assert catalog.replies["voting"]["ko"].body == "투표 안내입니다."


def test_missing_default_language_entry_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_catalog(skip="food_aid"))
    assert_catalog_error(path, "replies.food_aid.en", "default language 'en'")


def test_default_language_must_cover_every_intent(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_catalog(default_language="ko"))
    assert_catalog_error(path, "replies.voting.ko", "replies.unknown.ko")


def test_unknown_intent_is_refused(tmp_path: Path) -> None:
    extra = '[replies.lottery.en]\ntype = "text"\nbody = "no"\n'
    assert_catalog_error(
        write(tmp_path, minimal_catalog(extra=extra)), "replies.lottery", "lottery"
    )


def test_reaction_entry_is_refused(tmp_path: Path) -> None:
    extra = '[replies.reaction.en]\ntype = "text"\nbody = "thanks"\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.reaction", "never gets a reply")


@pytest.mark.parametrize("reply_type", ["interactive", "video", "TEXT"])
def test_unknown_type_is_refused(tmp_path: Path, reply_type: str) -> None:
    extra = f'[replies.voting.ko]\ntype = "{reply_type}"\nbody = "투표"\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.voting.ko.type", repr(reply_type), "unknown reply type")


def test_missing_type_is_refused(tmp_path: Path) -> None:
    extra = '[replies.voting.ko]\nbody = "투표"\n'
    assert_catalog_error(write(tmp_path, minimal_catalog(extra=extra)), "replies.voting.ko.type")


@pytest.mark.parametrize("body", ['""', '"   \\n  "'])
def test_empty_body_is_refused(tmp_path: Path, body: str) -> None:
    extra = f'[replies.voting.ja]\ntype = "text"\nbody = {body}\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.voting.ja.body", "empty")


def test_missing_body_is_refused(tmp_path: Path) -> None:
    extra = '[replies.voting.ja]\ntype = "text"\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.voting.ja.body", "missing")


def test_body_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    extra = f'[replies.voting.ja]\ntype = "text"\nbody = "{"あ" * MAX_TEXT_BODY}"\n'
    catalog = load_catalog(write(tmp_path, minimal_catalog(extra=extra)))
    assert len(catalog.replies["voting"]["ja"].body) == MAX_TEXT_BODY


def test_over_long_body_is_refused(tmp_path: Path) -> None:
    extra = f'[replies.voting.ja]\ntype = "text"\nbody = "{"あ" * (MAX_TEXT_BODY + 1)}"\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.voting.ja.body", "4097", "4096")


def test_emoji_count_twice_towards_the_limit(tmp_path: Path) -> None:
    body = "a" * (MAX_TEXT_BODY - 1) + "\U0001f44d"
    extra = f'[replies.voting.ja]\ntype = "text"\nbody = "{body}"\n'
    path = write(tmp_path, minimal_catalog(extra=extra))
    assert_catalog_error(path, "replies.voting.ja.body", "4097")


def test_unexpected_field_in_an_entry_is_refused(tmp_path: Path) -> None:
    extra = '[replies.voting.ko]\ntype = "text"\nbody = "투표"\nbuttons = []\n'
    assert_catalog_error(write(tmp_path, minimal_catalog(extra=extra)), "replies.voting.ko.buttons")


def test_bad_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'version = 1\n[replies.voting.en\ntype = "text"\n')
    assert_catalog_error(path, "invalid TOML", "line 2")


def test_duplicate_entry_is_bad_toml(tmp_path: Path) -> None:
    extra = '[replies.voting.en]\ntype = "text"\nbody = "again"\n'
    assert_catalog_error(write(tmp_path, minimal_catalog(extra=extra)), "invalid TOML")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_bytes(minimal_catalog().encode("utf-8") + b"# \xff\n")
    assert_catalog_error(path, "UTF-8")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert_catalog_error(tmp_path / "absent.toml", "cannot read")


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


# --- the Graph API send body ------------------------------------------------------------------


def test_to_graph_message_without_context() -> None:
    reply = Reply(intent="help", language="en", type="text", body="How can we help?")
    assert to_graph_message(reply, to="821012345678", reply_to=None) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "821012345678",
        "type": "text",
        "text": {"body": "How can we help?", "preview_url": False},
    }


def test_to_graph_message_quotes_the_citizens_message(packaged: Catalog) -> None:
    reply = choose_reply(packaged, "voting", "ko")
    message = to_graph_message(reply, to="821012345678", reply_to="wamid.HBgM")
    assert message["context"] == {"message_id": "wamid.HBgM"}
    assert message["text"] == {"body": reply.body, "preview_url": False}
    assert message["type"] == "text"


def test_to_graph_message_refuses_a_type_it_cannot_send() -> None:
    reply = Reply(intent="help", language="en", type="interactive", body="menu")
    with pytest.raises(ValueError, match="interactive"):
        to_graph_message(reply, to="1", reply_to=None)
