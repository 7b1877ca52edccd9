"""Webhook bodies built by the simulator look, byte for byte, like Meta's (reference §2, §3)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civicline.simulator.signing import sign
from civicline.simulator.webhooks import status_webhook, text_message_webhook

_SENT_WAMID = "wamid.HBgMu3g0t7yyCfkd2RuBZlz9m/x3iZdUTfm5Lt+N"


def message_of(body: bytes) -> dict[str, object]:
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    message: dict[str, object] = value["messages"][0]
    return message


def test_english_text_is_fixture_03_byte_for_byte(webhook_fixtures: Path) -> None:
    body, wamid = text_message_webhook(
        wa_id="447700900321",
        text="Hi, my passport expires next month. How do I renew it and how long does it take?",
        profile_name="Olivia Bennett",
        wamid="wamid.HBgMjoD2GnTbL2AY87RpcUh1Y1ff2cxcNtkbIPyv",
        timestamp=1784361720,
    )
    assert body == (webhook_fixtures / "03_text_en_passport.json").read_bytes()
    assert wamid == "wamid.HBgMjoD2GnTbL2AY87RpcUh1Y1ff2cxcNtkbIPyv"


def test_korean_text_is_fixture_01_in_metas_escaped_wire_form(webhook_fixtures: Path) -> None:
    fixture = (webhook_fixtures / "01_text_ko_voting.json").read_text(encoding="utf-8")
    body, _ = text_message_webhook(
        wa_id="821052347781",
        text="투표소 위치 알려주세요",
        profile_name="김민지",
        wamid="wamid.HBgMynknU4a++H43rlki5CbVcIUBuz+bhi9upTnN",
        timestamp="1784361600",
    )
    assert json.loads(body) == json.loads(fixture)
    # The fixture is readable UTF-8; Meta's wire form writes the same text as \uXXXX escapes.
    escaped = fixture.replace("김민지", "\\uae40\\ubbfc\\uc9c0").replace(
        "투표소 위치 알려주세요",
        "\\ud22c\\ud45c\\uc18c \\uc704\\uce58 \\uc54c\\ub824\\uc8fc\\uc138\\uc694",
    )
    assert body == escaped.encode("ascii")


def test_body_is_ascii_with_lowercase_escapes() -> None:
    body, _ = text_message_webhook(wa_id="819023456712", text="避難所はどこですか")
    assert body.isascii()
    assert b"\\u907f\\u96e3\\u6240" in body  # 避難所
    assert b", " not in body
    assert b": " not in body  # compact separators, as on the wire


def test_emoji_is_written_as_a_surrogate_pair() -> None:
    body, _ = text_message_webhook(wa_id="447700900321", text="thanks 🙏")
    assert b"thanks \\ud83d\\ude4f" in body
    assert message_of(body)["text"] == {"body": "thanks 🙏"}


@given(text=st.text(min_size=1))
def test_any_text_survives_the_round_trip(text: str) -> None:
    body, _ = text_message_webhook(wa_id="821052347781", text=text)
    assert body.isascii()
    assert message_of(body)["text"] == {"body": text}


def test_signature_of_the_built_body_verifies() -> None:
    body, _ = text_message_webhook(wa_id="821052347781", text="투표소 위치 알려주세요")
    header = sign(body, "app-secret")
    expected = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header.encode(), expected.encode())


def test_generated_wamids_are_unique_and_in_the_body() -> None:
    built = [text_message_webhook(wa_id="821052347781", text="hi") for _ in range(200)]
    wamids = {wamid for _, wamid in built}
    assert len(wamids) == 200
    for body, wamid in built[:5]:
        assert wamid.startswith("wamid.")
        assert message_of(body)["id"] == wamid


def test_default_timestamp_is_now_in_unix_seconds_as_a_string() -> None:
    before = int(time.time())
    body, _ = text_message_webhook(wa_id="821052347781", text="hi")
    stamp = message_of(body)["timestamp"]
    assert isinstance(stamp, str)
    assert before <= int(stamp) <= int(time.time())


def test_without_a_profile_name_the_contact_has_only_the_wa_id() -> None:
    body, _ = text_message_webhook(wa_id="821052347781", text="hi")
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    assert value["contacts"] == [{"wa_id": "821052347781"}]
    assert value["metadata"]["phone_number_id"] == "106512349876543"


@pytest.mark.parametrize(
    ("status", "timestamp", "fixture"),
    [
        ("sent", "1784361630", "11_status_sent.json"),
        ("delivered", "1784361632", "12_status_delivered.json"),
        ("read", "1784361695", "13_status_read.json"),
    ],
)
def test_status_receipts_are_fixtures_11_to_13(
    webhook_fixtures: Path, status: str, timestamp: str, fixture: str
) -> None:
    body = status_webhook(
        wamid=_SENT_WAMID, status=status, recipient_id="821052347781", timestamp=timestamp
    )
    assert body == (webhook_fixtures / fixture).read_bytes()


def test_failed_receipt_is_fixture_14(webhook_fixtures: Path) -> None:
    body = status_webhook(
        wamid="wamid.HBgMN7yH4YXvAnmwz068z9FHfabv8vrIkivGfTvO",
        status="failed",
        recipient_id="5215512345678",
        timestamp=1784451600,
        error_code=131047,
    )
    assert body == (webhook_fixtures / "14_status_failed.json").read_bytes()


def test_failed_receipt_defaults_to_an_error() -> None:
    body = status_webhook(wamid="wamid.X", status="failed", recipient_id="821052347781")
    receipt = json.loads(body)["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert receipt["errors"][0]["code"] == 131000
    assert "pricing" not in receipt


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        status_webhook(wamid="wamid.X", status="bounced", recipient_id="821052347781")
