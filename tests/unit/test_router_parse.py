"""The router's webhook parser: every sample body, escaping, batching, garbage and totality."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civicline.router.core import (
    DeliveryStatus,
    InboundMessage,
    ParsedWebhook,
    WebhookError,
    parse_webhook,
)

RECEIVED_AT = datetime(2026, 7, 20, 12, 0, tzinfo=UTC)
PHONE_NUMBER_ID = "106512349876543"
WABA_ID = "109384756102938"
KO_CITIZEN = "821052347781"
JA_CITIZEN = "819023456712"
EN_CITIZEN = "447700900321"
ES_CITIZEN = "5215512345678"
Webhook = Callable[[str], Any]


def parse(payload: object) -> ParsedWebhook:
    return parse_webhook(payload, received_at=RECEIVED_AT)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def envelope(value: dict[str, Any], *, field: str = "messages") -> dict[str, Any]:
    metadata = {"display_phone_number": "15550100200", "phone_number_id": PHONE_NUMBER_ID}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "field": field,
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                    }
                ],
            }
        ],
    }


def text_message(wamid: str, body: str = "투표소 위치 알려주세요", **extra: Any) -> dict[str, Any]:
    message = {
        "from": KO_CITIZEN,
        "id": wamid,
        "timestamp": "1784361600",
        "type": "text",
        "text": {"body": body},
    }
    message.update(extra)
    return message


def only_message(parsed: ParsedWebhook) -> InboundMessage:
    assert parsed.rejected_reason is None
    assert len(parsed.messages) == 1, parsed
    return parsed.messages[0]


def only_status(parsed: ParsedWebhook) -> DeliveryStatus:
    assert parsed.rejected_reason is None
    assert len(parsed.statuses) == 1, parsed
    return parsed.statuses[0]


# --- every sample body ----------------------------------------------------------------

COUNTS = {
    "01_text_ko_voting.json": (1, 0, 0),
    "02_text_ja_evacuation.json": (1, 0, 0),
    "03_text_en_passport.json": (1, 0, 0),
    "04_interactive_button_reply.json": (1, 0, 0),
    "05_interactive_list_reply.json": (1, 0, 0),
    "06_template_quick_reply_button.json": (1, 0, 0),
    "07_location.json": (1, 0, 0),
    "08_image_with_caption.json": (1, 0, 0),
    "09_reaction.json": (1, 0, 0),
    "10_unsupported_with_errors.json": (1, 0, 0),
    "11_status_sent.json": (0, 1, 0),
    "12_status_delivered.json": (0, 1, 0),
    "13_status_read.json": (0, 1, 0),
    "14_status_failed.json": (0, 1, 0),
    "15_batch_3_messages_2_users.json": (3, 0, 0),
    "16_two_entries.json": (1, 1, 0),
    "17_value_level_errors.json": (0, 0, 1),
    "18_document.json": (1, 0, 0),
}


def test_every_sample_body_is_covered(fixtures_dir: Path) -> None:
    assert {path.name for path in fixtures_dir.glob("*.json")} == set(COUNTS)


@pytest.mark.parametrize(("name", "counts"), COUNTS.items())
def test_sample_body_parses_with_the_right_counts(
    webhook: Webhook, name: str, counts: tuple[int, int, int]
) -> None:
    parsed = parse(webhook(name))

    assert parsed.rejected_reason is None
    assert parsed.skipped == ()
    assert parsed.ignored_fields == ()
    assert (len(parsed.messages), len(parsed.statuses), len(parsed.errors)) == counts


SINGLE_MESSAGES = [
    # name, type, text, reply_id, sender, profile name, unix timestamp
    (
        "01_text_ko_voting.json",
        "text",
        "투표소 위치 알려주세요",
        None,
        KO_CITIZEN,
        "김민지",
        1784361600,
    ),
    (
        "02_text_ja_evacuation.json",
        "text",
        "避難所はどこですか",
        None,
        JA_CITIZEN,
        "佐藤 健",
        1784361660,
    ),
    (
        "03_text_en_passport.json",
        "text",
        "Hi, my passport expires next month. How do I renew it and how long does it take?",
        None,
        EN_CITIZEN,
        "Olivia Bennett",
        1784361720,
    ),
    (
        "04_interactive_button_reply.json",
        "interactive",
        "Renew online",
        "passport_renew_online",
        EN_CITIZEN,
        "Olivia Bennett",
        1784361900,
    ),
    (
        "05_interactive_list_reply.json",
        "interactive",
        "투표소 찾기",
        "svc_election_polling_place",
        KO_CITIZEN,
        "김민지",
        1784362020,
    ),
    (
        "06_template_quick_reply_button.json",
        "button",
        "確認しました",
        "SHELTER_ALERT_ACK",
        JA_CITIZEN,
        "佐藤 健",
        1784362500,
    ),
    ("07_location.json", "location", None, None, JA_CITIZEN, "佐藤 健", 1784362560),
    (
        "08_image_with_caption.json",
        "image",
        "Photo page of my current passport",
        None,
        EN_CITIZEN,
        "Olivia Bennett",
        1784363100,
    ),
    ("09_reaction.json", "reaction", None, None, KO_CITIZEN, "김민지", 1784363200),
    (
        "10_unsupported_with_errors.json",
        "unsupported",
        None,
        None,
        ES_CITIZEN,
        "Mariana López",
        1784363300,
    ),
    (
        "18_document.json",
        "document",
        "Comprobante de domicilio",
        None,
        ES_CITIZEN,
        "Mariana López",
        1784364600,
    ),
]


@pytest.mark.parametrize(
    ("name", "message_type", "text", "reply_id", "sender", "profile_name", "unix"),
    SINGLE_MESSAGES,
)
def test_single_message_fields(
    webhook: Webhook,
    name: str,
    message_type: str,
    text: str | None,
    reply_id: str | None,
    sender: str,
    profile_name: str,
    unix: int,
) -> None:
    body = webhook(name)
    message = only_message(parse(body))
    raw = body["entry"][0]["changes"][0]["value"]["messages"][0]

    assert message.wamid == raw["id"]
    assert message.type == message_type
    assert message.text == text
    assert message.reply_id == reply_id
    assert message.sender == sender
    assert message.sender_user_id is None
    assert message.citizen_key() == sender
    assert message.profile_name == profile_name
    assert message.timestamp == at(unix)
    assert message.timestamp.utcoffset() == timedelta(0)
    assert message.phone_number_id == PHONE_NUMBER_ID
    assert message.display_phone_number == "15550100200"
    assert message.waba_id == WABA_ID


def test_context_points_at_our_earlier_message(webhook: Webhook) -> None:
    button = only_message(parse(webhook("04_interactive_button_reply.json")))
    row = only_message(parse(webhook("05_interactive_list_reply.json")))
    template = only_message(parse(webhook("06_template_quick_reply_button.json")))
    plain = only_message(parse(webhook("01_text_ko_voting.json")))

    assert button.context_id == "wamid.HBgMjkplCUjCWPkOmZjZtTRDVk4UWO8Mfbxto0/M"
    assert row.context_id == "wamid.HBgMUqt82hppvWgTp5fH2utWK2Fkkm0tq48tHD09"
    assert template.context_id == "wamid.HBgMoYw8OFJ48Dm9q5qv0LeJQJGXKBPzAFZDg+XV"
    assert plain.context_id is None


def test_content_is_the_types_own_object(webhook: Webhook) -> None:
    location = only_message(parse(webhook("07_location.json")))
    image = only_message(parse(webhook("08_image_with_caption.json")))
    reaction = only_message(parse(webhook("09_reaction.json")))
    document = only_message(parse(webhook("18_document.json")))
    row = only_message(parse(webhook("05_interactive_list_reply.json")))

    assert location.content == {
        "latitude": 35.6895,
        "longitude": 139.6917,
        "name": "新宿区役所",
        "address": "東京都新宿区歌舞伎町1-4-1",
    }
    assert image.content["id"] == "1482736550918273"
    assert image.content["mime_type"] == "image/jpeg"
    assert reaction.content == {
        "message_id": "wamid.HBgM9pZfSqRD5OGH56IUnyYis4Ec8cUU6GAuEYNV",
        "emoji": "👍",
    }
    assert document.content["filename"] == "comprobante_domicilio.pdf"
    assert document.content["mime_type"] == "application/pdf"
    assert row.content["list_reply"]["description"] == "주소로 가까운 투표소 검색"


def test_unsupported_message_keeps_its_131051_error(webhook: Webhook) -> None:
    message = only_message(parse(webhook("10_unsupported_with_errors.json")))

    assert message.content == {}
    assert len(message.errors) == 1
    assert message.errors[0]["code"] == 131051
    assert message.errors[0]["error_data"]["details"] == "Message type is currently not supported."


@pytest.mark.parametrize(
    ("name", "state", "unix", "priced"),
    [
        ("11_status_sent.json", "sent", 1784361630, True),
        ("12_status_delivered.json", "delivered", 1784361632, True),
        ("13_status_read.json", "read", 1784361695, False),
        ("14_status_failed.json", "failed", 1784451600, False),
    ],
)
def test_status_bodies(webhook: Webhook, name: str, state: str, unix: int, priced: bool) -> None:
    status = only_status(parse(webhook(name)))

    assert status.status == state
    assert status.timestamp == at(unix)
    assert status.phone_number_id == PHONE_NUMBER_ID
    assert status.conversation is None
    assert (status.pricing is not None) is priced
    if priced:
        assert status.pricing == {
            "billable": False,
            "pricing_model": "PMP",
            "type": "free_customer_service",
            "category": "service",
        }


def test_sent_delivered_read_share_one_wamid(webhook: Webhook) -> None:
    names = ("11_status_sent.json", "12_status_delivered.json", "13_status_read.json")
    statuses = [only_status(parse(webhook(name))) for name in names]

    assert {status.wamid for status in statuses} == {
        "wamid.HBgMu3g0t7yyCfkd2RuBZlz9m/x3iZdUTfm5Lt+N"
    }
    assert {status.recipient_id for status in statuses} == {KO_CITIZEN}
    assert all(status.errors == () for status in statuses)


def test_failed_status_carries_131047(webhook: Webhook) -> None:
    status = only_status(parse(webhook("14_status_failed.json")))

    assert status.recipient_id == ES_CITIZEN
    assert len(status.errors) == 1
    error = status.errors[0]
    assert error["code"] == 131047
    assert error["title"] == "Re-engagement message"
    assert "24 hours" in error["error_data"]["details"]
    assert error["href"].startswith("https://developers.facebook.com/")


def test_batch_of_three_messages_from_two_users(webhook: Webhook) -> None:
    parsed = parse(webhook("15_batch_3_messages_2_users.json"))

    assert [message.text for message in parsed.messages] == [
        "사전투표는 언제 하나요?",
        "Can I renew a child's passport online too?",
        "신분증은 뭘 가져가야 하나요?",
    ]
    assert [message.citizen_key() for message in parsed.messages] == [
        KO_CITIZEN,
        EN_CITIZEN,
        KO_CITIZEN,
    ]
    assert len({message.citizen_key() for message in parsed.messages}) == 2
    assert [message.profile_name for message in parsed.messages] == [
        "김민지",
        "Olivia Bennett",
        "김민지",
    ]
    assert [message.timestamp for message in parsed.messages] == [
        at(1784363600),
        at(1784363601),
        at(1784363603),
    ]
    assert dict(parsed.contacts) == {KO_CITIZEN: "김민지", EN_CITIZEN: "Olivia Bennett"}


def test_two_entries_reply_from_their_own_numbers(webhook: Webhook) -> None:
    parsed = parse(webhook("16_two_entries.json"))

    assert (len(parsed.messages), len(parsed.statuses)) == (1, 1)
    message, status = parsed.messages[0], parsed.statuses[0]
    assert message.text == "給水所の場所を教えてください"
    assert message.phone_number_id == PHONE_NUMBER_ID
    assert message.waba_id == WABA_ID
    assert message.timestamp == at(1784364100)
    assert status.phone_number_id == "110293847561029"
    assert status.status == "delivered"
    assert status.recipient_id == EN_CITIZEN
    assert status.pricing is not None
    assert status.pricing["category"] == "utility"


def test_value_level_error_130429(webhook: Webhook) -> None:
    parsed = parse(webhook("17_value_level_errors.json"))

    assert parsed.messages == ()
    assert parsed.statuses == ()
    assert len(parsed.errors) == 1
    error = parsed.errors[0]
    assert isinstance(error, WebhookError)
    assert error.code == 130429
    assert error.phone_number_id == PHONE_NUMBER_ID
    assert error.title == "Rate limit hit"
    assert error.message == "(#130429) Rate limit hit"
    assert error.details == "Cloud API message throughput has been reached."
    assert error.raw["href"].startswith("https://developers.facebook.com/")


# --- escaping on the wire -------------------------------------------------------------


def test_escaped_unicode_parses_to_the_same_text() -> None:
    text = "투표소 위치 알려주세요 🙏 避難所はどこですか äöå"
    body = envelope(
        {
            "contacts": [{"profile": {"name": "김민지"}, "wa_id": KO_CITIZEN}],
            "messages": [text_message("wamid.HBgM/slash+plus", text)],
        }
    )
    as_utf8 = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    # Meta's wire form: lowercase \uXXXX, emoji as a surrogate pair, and "/" escaped too.
    escaped = json.dumps(body, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/")
    as_escaped = escaped.encode("ascii")
    assert b"\\ud83d\\ude4f" in as_escaped
    assert b"\\ud22c" in as_escaped  # 투
    assert b"\\/" in as_escaped

    from_utf8 = only_message(parse(orjson.loads(as_utf8)))
    from_escaped = only_message(parse(orjson.loads(as_escaped)))
    from_stdlib = only_message(parse(json.loads(as_escaped)))

    assert from_escaped.text == from_utf8.text == from_stdlib.text == text
    assert from_escaped.wamid == from_utf8.wamid == "wamid.HBgM/slash+plus"
    assert from_escaped.profile_name == "김민지"
    assert from_escaped == from_utf8


def test_escaped_sample_body_parses_like_the_utf8_one(webhook: Webhook, fixtures_dir: Path) -> None:
    raw = (fixtures_dir / "15_batch_3_messages_2_users.json").read_bytes()
    escaped = json.dumps(json.loads(raw), ensure_ascii=True).encode("ascii")

    assert parse(orjson.loads(escaped)) == parse(webhook("15_batch_3_messages_2_users.json"))


# --- batching, duplicates, BSUIDs -----------------------------------------------------


def test_duplicate_wamid_in_one_body_is_returned_once() -> None:
    body = envelope(
        {
            "messages": [
                text_message("wamid.A", "first copy"),
                text_message("wamid.B"),
                text_message("wamid.A", "second copy"),
            ]
        }
    )

    parsed = parse(body)

    assert [message.wamid for message in parsed.messages] == ["wamid.A", "wamid.B"]
    assert parsed.messages[0].text == "first copy"


def test_duplicate_statuses_are_deduplicated_on_wamid_and_state() -> None:
    def status(state: str) -> dict[str, Any]:
        return {"id": "wamid.S", "status": state, "timestamp": "1784361630", "recipient_id": "1"}

    body = envelope({"statuses": [status("sent"), status("delivered"), status("sent")]})

    parsed = parse(body)

    assert [(s.wamid, s.status) for s in parsed.statuses] == [
        ("wamid.S", "sent"),
        ("wamid.S", "delivered"),
    ]


def test_every_change_of_every_entry_is_read() -> None:
    body = envelope({"messages": [text_message("wamid.1")]})
    second_change = copy.deepcopy(body["entry"][0]["changes"][0])
    second_change["value"]["messages"] = [text_message("wamid.2")]
    body["entry"][0]["changes"].append(second_change)
    other_entry = copy.deepcopy(body["entry"][0])
    other_entry["id"] = "999"
    other_entry["changes"] = [copy.deepcopy(second_change)]
    other_entry["changes"][0]["value"]["messages"] = [text_message("wamid.3")]
    other_entry["changes"][0]["value"]["metadata"]["phone_number_id"] = "777"
    body["entry"].append(other_entry)

    parsed = parse(body)

    assert [(m.wamid, m.phone_number_id, m.waba_id) for m in parsed.messages] == [
        ("wamid.1", PHONE_NUMBER_ID, WABA_ID),
        ("wamid.2", PHONE_NUMBER_ID, WABA_ID),
        ("wamid.3", "777", "999"),
    ]


def test_bsuid_only_sender_is_accepted() -> None:
    bsuid = "US.13491208655302741918"
    message = text_message("wamid.U", "hello", from_user_id=bsuid)
    del message["from"]
    body = envelope(
        {
            "contacts": [{"profile": {"name": "Sam", "username": "sam"}, "user_id": bsuid}],
            "messages": [message],
        }
    )

    parsed = parse(body)
    parsed_message = only_message(parsed)

    assert parsed_message.sender is None
    assert parsed_message.sender_user_id == bsuid
    assert parsed_message.citizen_key() == bsuid
    assert parsed_message.profile_name == "Sam"
    assert dict(parsed.contacts) == {bsuid: "Sam"}


def test_contact_user_id_is_attached_to_a_phone_sender() -> None:
    bsuid = "KR.998877"
    body = envelope(
        {
            "contacts": [{"profile": {"name": "김민지"}, "wa_id": KO_CITIZEN, "user_id": bsuid}],
            "messages": [text_message("wamid.K")],
        }
    )

    message = only_message(parse(body))

    assert message.sender == KO_CITIZEN
    assert message.sender_user_id == bsuid
    assert message.citizen_key() == KO_CITIZEN


def test_message_without_any_sender_is_skipped() -> None:
    anonymous = text_message("wamid.X")
    del anonymous["from"]
    body = envelope({"messages": [anonymous, text_message("wamid.ok")]})

    parsed = parse(body)

    assert [message.wamid for message in parsed.messages] == ["wamid.ok"]
    assert parsed.skipped == (
        "entry[0].changes[0].value.messages[0]: no sender (neither 'from' nor 'from_user_id')",
    )


def test_inbound_message_refuses_to_exist_without_a_citizen() -> None:
    with pytest.raises(ValueError, match="sender"):
        InboundMessage(
            wamid="wamid.X",
            phone_number_id=PHONE_NUMBER_ID,
            display_phone_number=None,
            waba_id=None,
            sender=None,
            sender_user_id=None,
            profile_name=None,
            timestamp=RECEIVED_AT,
            type="text",
            text="hi",
            reply_id=None,
            context_id=None,
            content={},
            errors=(),
        )


# --- types ----------------------------------------------------------------------------


def test_unknown_type_is_kept_verbatim() -> None:
    message = text_message("wamid.F", type="foo", foo={"bar": 1})
    del message["text"]

    parsed_message = only_message(parse(envelope({"messages": [message]})))

    assert parsed_message.type == "foo"
    assert parsed_message.content == {"bar": 1}
    assert parsed_message.text is None


def test_missing_type_is_unknown() -> None:
    message = text_message("wamid.T")
    del message["type"]

    assert only_message(parse(envelope({"messages": [message]}))).type == "unknown"


def test_contacts_message_keeps_its_list_under_its_name() -> None:
    cards = [{"name": {"formatted_name": "Jo"}, "phones": [{"phone": "+1 555", "wa_id": "1555"}]}]
    message = text_message("wamid.C", type="contacts", contacts=cards)

    assert only_message(parse(envelope({"messages": [message]}))).content == {"contacts": cards}


def test_flow_completion_has_no_human_text() -> None:
    interactive = {
        "type": "nfm_reply",
        "nfm_reply": {"name": "flow", "body": "Sent", "response_json": "{not json"},
    }
    message = text_message("wamid.N", type="interactive", interactive=interactive)

    parsed_message = only_message(parse(envelope({"messages": [message]})))

    assert parsed_message.text is None
    assert parsed_message.reply_id is None
    assert parsed_message.content == interactive


def test_reaction_removed_has_empty_emoji() -> None:
    message = text_message("wamid.R", type="reaction", reaction={"message_id": "wamid.out"})

    parsed_message = only_message(parse(envelope({"messages": [message]})))

    assert parsed_message.type == "reaction"
    assert parsed_message.content == {"message_id": "wamid.out"}


def test_media_without_caption_has_no_text() -> None:
    image = {"id": "1", "mime_type": "image/jpeg", "sha256": "x"}
    message = text_message("wamid.I", type="image", image=image)

    assert only_message(parse(envelope({"messages": [message]}))).text is None


# --- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1784361600", at(1784361600)),
        (1784361600, at(1784361600)),
        ("1784361600000", at(1784361600)),  # milliseconds, as courier has seen
        (1784361600123, datetime(2026, 7, 18, 8, 0, 0, 123000, tzinfo=UTC)),
        (" 1784361600 ", at(1784361600)),
        ("yesterday", RECEIVED_AT),
        ("", RECEIVED_AT),
        (None, RECEIVED_AT),
        (True, RECEIVED_AT),
        ("-5", RECEIVED_AT),
        ("0", RECEIVED_AT),
        ("nan", RECEIVED_AT),
        ("inf", RECEIVED_AT),
        ("9" * 400, RECEIVED_AT),
        (10**400, RECEIVED_AT),
        ([1784361600], RECEIVED_AT),
    ],
)
def test_timestamp(raw: object, expected: datetime) -> None:
    message = text_message("wamid.T", timestamp=raw)

    assert only_message(parse(envelope({"messages": [message]}))).timestamp == expected


def test_missing_timestamp_falls_back_to_received_at() -> None:
    message = text_message("wamid.T")
    del message["timestamp"]

    assert only_message(parse(envelope({"messages": [message]}))).timestamp == RECEIVED_AT


def test_received_at_is_normalised_to_utc() -> None:
    message = text_message("wamid.T", timestamp="soon")
    body = envelope({"messages": [message]})
    seoul = datetime(2026, 7, 20, 21, 0, tzinfo=timezone(timedelta(hours=9)))

    from_seoul = only_message(parse_webhook(body, received_at=seoul)).timestamp
    from_naive = only_message(parse_webhook(body, received_at=datetime(2026, 7, 20))).timestamp

    assert from_seoul == RECEIVED_AT
    assert from_seoul.tzinfo is UTC
    assert from_naive == datetime(2026, 7, 20, tzinfo=UTC)


# --- garbage --------------------------------------------------------------------------

W = "whatsapp_business_account"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "body is not a JSON object (got array)"),
        ("hello", "body is not a JSON object (got string)"),
        (42, "body is not a JSON object (got number)"),
        (4.2, "body is not a JSON object (got number)"),
        (True, "body is not a JSON object (got boolean)"),
        (None, "body is not a JSON object (got null)"),
        ({}, "'object' is missing"),
        (
            {"object": "page", "entry": []},
            "'object' is 'page', expected 'whatsapp_business_account'",
        ),
        ({"object": None, "entry": []}, "'object' is null, expected 'whatsapp_business_account'"),
        ({"object": W}, "'entry' is missing"),
        ({"object": W, "entry": {}}, "'entry' is not a list (got object)"),
        ({"object": W, "entry": "x"}, "'entry' is not a list (got string)"),
        ({"object": W, "entry": [1, "x"]}, "no usable item: entry[0]: not an object"),
        ({"object": W, "entry": [{"id": "1"}]}, "no usable item: entry[0].changes: not a list"),
    ],
)
def test_not_a_whatsapp_webhook_is_rejected_with_a_reason(payload: object, reason: str) -> None:
    parsed = parse(payload)

    assert parsed.rejected_reason == reason
    assert (parsed.messages, parsed.statuses, parsed.errors) == ((), (), ())


def test_long_object_value_is_cut_short_in_the_reason() -> None:
    parsed = parse({"object": "x" * 5000, "entry": []})

    assert parsed.rejected_reason is not None
    assert len(parsed.rejected_reason) < 120


def test_empty_entry_list_is_not_rejected() -> None:
    assert parse({"object": W, "entry": []}) == ParsedWebhook()


def test_other_fields_are_ignored_not_rejected() -> None:
    body = envelope({"messages": [text_message("wamid.M")]})
    body["entry"][0]["changes"].insert(
        0, {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
    )
    body["entry"][0]["changes"].append({"field": "message_template_status_update", "value": {}})

    parsed = parse(body)

    assert [message.wamid for message in parsed.messages] == ["wamid.M"]
    assert parsed.ignored_fields == ("account_update", "message_template_status_update")
    assert parsed.skipped == ()


def test_body_with_only_other_fields_is_empty_but_accepted() -> None:
    body = envelope({"event": "FLAGGED"}, field="phone_number_quality_update")

    parsed = parse(body)

    assert parsed.rejected_reason is None
    assert (parsed.messages, parsed.statuses, parsed.errors) == ((), (), ())
    assert parsed.ignored_fields == ("phone_number_quality_update",)


def test_malformed_items_are_skipped_and_good_ones_kept() -> None:
    no_id = text_message("wamid.X")
    del no_id["id"]
    body = envelope(
        {
            "messages": [no_id, "junk", text_message("wamid.good"), text_message("   ")],
            "statuses": [
                {"id": "wamid.S", "timestamp": "1"},
                {"status": "read"},
                {"id": "wamid.S", "status": "READ", "timestamp": "1784361695"},
            ],
            "errors": [7, {"code": "131000"}],
        }
    )

    parsed = parse(body)

    assert parsed.rejected_reason is None
    assert [message.wamid for message in parsed.messages] == ["wamid.good"]
    assert [(s.wamid, s.status) for s in parsed.statuses] == [("wamid.S", "read")]
    assert [error.code for error in parsed.errors] == [131000]
    where = "entry[0].changes[0].value"
    assert parsed.skipped == (
        f"{where}.messages[0]: no id",
        f"{where}.messages[1]: not an object",
        f"{where}.messages[3]: no id",
        f"{where}.statuses[0]: no status",
        f"{where}.statuses[1]: no id",
        f"{where}.errors[0]: not an object",
    )


def test_body_of_only_malformed_items_is_rejected() -> None:
    no_id = text_message("wamid.X")
    del no_id["id"]

    parsed = parse(envelope({"messages": [no_id]}))

    assert parsed.rejected_reason == "no usable item: entry[0].changes[0].value.messages[0]: no id"
    assert parsed.messages == ()


def test_messages_without_a_number_to_reply_from_are_skipped() -> None:
    body = envelope({"messages": [text_message("wamid.M")]})
    del body["entry"][0]["changes"][0]["value"]["metadata"]

    parsed = parse(body)

    assert parsed.messages == ()
    assert parsed.rejected_reason is not None
    assert "phone_number_id" in parsed.rejected_reason


def test_value_level_errors_keep_odd_codes() -> None:
    body = envelope({"errors": [{"code": "not a number", "title": 5}, {}]})

    parsed = parse(body)

    assert [(error.code, error.title) for error in parsed.errors] == [(None, None), (None, None)]


# --- totality (hypothesis) ------------------------------------------------------------

INTERESTING_KEYS = (
    "object",
    "entry",
    "id",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "display_phone_number",
    "contacts",
    "wa_id",
    "user_id",
    "profile",
    "name",
    "messages",
    "statuses",
    "errors",
    "from",
    "from_user_id",
    "timestamp",
    "type",
    "text",
    "body",
    "interactive",
    "button_reply",
    "list_reply",
    "button",
    "payload",
    "context",
    "caption",
    "status",
    "pricing",
    "conversation",
    "code",
    "error_data",
    "details",
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from([W, "messages", "text", "interactive", "1784361600", "wamid.x"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(INTERESTING_KEYS) | st.text(max_size=8), children, max_size=5
        )
    ),
    max_leaves=25,
)


def assert_well_formed(parsed: ParsedWebhook) -> None:
    assert isinstance(parsed, ParsedWebhook)
    if parsed.rejected_reason is not None:
        assert (parsed.messages, parsed.statuses, parsed.errors) == ((), (), ())
    wamids = [message.wamid for message in parsed.messages]
    assert len(wamids) == len(set(wamids))
    for message in parsed.messages:
        assert message.citizen_key()
        assert message.timestamp.tzinfo is UTC
        assert isinstance(message.content, dict)
        assert message.text is None or isinstance(message.text, str)
    keys = [(status.wamid, status.status) for status in parsed.statuses]
    assert len(keys) == len(set(keys))
    for status in parsed.statuses:
        assert status.timestamp.tzinfo is UTC


@given(json_values)
def test_parse_never_raises_on_any_json_value(payload: object) -> None:
    assert_well_formed(parse(payload))


@given(
    entry=json_values,
    value=st.dictionaries(st.sampled_from(INTERESTING_KEYS), json_values, max_size=6),
)
def test_parse_never_raises_inside_a_valid_envelope(entry: object, value: dict[str, Any]) -> None:
    assert_well_formed(parse({"object": W, "entry": entry}))
    assert_well_formed(parse(envelope(value)))


@given(fields=st.dictionaries(st.sampled_from(INTERESTING_KEYS) | st.text(), json_values))
def test_parse_never_raises_on_arbitrary_message_fields(fields: dict[str, Any]) -> None:
    message = text_message("wamid.H")
    message.update(fields)
    status = {"id": "wamid.S", "status": "sent", "timestamp": "1784361630", **fields}
    error = {"code": 130429, **fields}
    contact = {"profile": {"name": "x"}, "wa_id": KO_CITIZEN, **fields}

    parsed = parse(
        envelope(
            {"contacts": [contact], "messages": [message], "statuses": [status], "errors": [error]}
        )
    )

    assert_well_formed(parsed)


def _paths(node: object, prefix: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*prefix, index))


def _replace(root: Any, path: tuple[Any, ...], replacement: object) -> Any:
    if not path:
        return replacement
    parent = root
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = replacement
    return root


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_never_raises_when_any_node_of_a_real_body_is_replaced(
    data: st.DataObject, fixtures_dir: Path
) -> None:
    name = data.draw(st.sampled_from(sorted(COUNTS)))
    body = orjson.loads((fixtures_dir / name).read_bytes())
    path = data.draw(st.sampled_from(list(_paths(body))))
    mutated = _replace(body, path, data.draw(json_values))

    assert_well_formed(parse(mutated))
