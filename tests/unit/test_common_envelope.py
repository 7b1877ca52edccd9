"""The envelope every service publishes: an orjson round trip, deterministic ids, one error type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from civicline.common.envelope import SCHEMA_VERSION, Envelope, EnvelopeError, event_id

OCCURRED_AT = datetime(2026, 7, 18, 9, 30, 15, 123456, tzinfo=UTC)


def sample(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "event_id": event_id("message", "wamid.HBgMynknU4a"),
        "kind": "message.voting",
        "occurred_at": OCCURRED_AT,
        "correlation_id": "wamid.HBgMynknU4a",
        "payload": {
            "text": "투표소 위치 알려주세요",
            "ja": "投票所はどこですか",
            "emoji": "🗳️",
            "nested": {"list": [1, 2.5, None, True], "empty": {}},
        },
    }
    fields.update(changes)
    return Envelope(**fields)


def document(**changes: Any) -> dict[str, Any]:
    encoded: dict[str, Any] = orjson.loads(sample().encode())
    encoded.update(changes)
    return encoded


def test_round_trip_keeps_every_field() -> None:
    envelope = sample()
    decoded = Envelope.decode(envelope.encode())
    assert decoded == envelope
    assert isinstance(decoded.event_id, uuid.UUID)
    assert decoded.occurred_at == OCCURRED_AT
    assert decoded.occurred_at.utcoffset() == timedelta(0)
    assert decoded.payload["text"] == "투표소 위치 알려주세요"
    assert decoded.schema_version == SCHEMA_VERSION


def test_encoding_is_utf8_json_with_a_z_timestamp() -> None:
    encoded = sample().encode()
    assert "투표소".encode() in encoded
    raw = orjson.loads(encoded)
    assert raw["occurred_at"] == "2026-07-18T09:30:15.123456Z"
    assert raw["event_id"] == str(sample().event_id)
    assert raw["schema_version"] == SCHEMA_VERSION


def test_an_offset_timestamp_is_the_same_instant_after_a_round_trip() -> None:
    seoul = timezone(timedelta(hours=9))
    at_seoul = OCCURRED_AT.astimezone(seoul)
    decoded = Envelope.decode(sample(occurred_at=at_seoul).encode())
    assert decoded.occurred_at == OCCURRED_AT


def test_empty_payload_round_trips() -> None:
    envelope = sample(payload={})
    assert Envelope.decode(envelope.encode()) == envelope


def test_event_id_is_deterministic() -> None:
    assert event_id("message", "wamid.A") == event_id("message", "wamid.A")
    assert event_id("message", "wamid.A").version == 5


@pytest.mark.parametrize(
    "other",
    [
        ("message", "wamid.B"),
        ("status", "wamid.A"),
        ("message", "wamid.A", "read"),
        ("message",),
        ("messagewamid.A",),
    ],
)
def test_different_natural_keys_give_different_ids(other: tuple[str, ...]) -> None:
    assert event_id(*other) != event_id("message", "wamid.A")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"not json", "not JSON", id="not-json"),
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "JSON object", id="array"),
        pytest.param(b'"text"', "JSON object", id="string"),
        pytest.param(b"null", "JSON object", id="null"),
    ],
)
def test_decode_refuses_non_objects(data: bytes, expected: str) -> None:
    with pytest.raises(EnvelopeError, match=expected):
        Envelope.decode(data)


@pytest.mark.parametrize(
    "missing", ["event_id", "kind", "occurred_at", "correlation_id", "payload", "schema_version"]
)
def test_decode_names_a_missing_field(missing: str) -> None:
    broken = document()
    del broken[missing]
    with pytest.raises(EnvelopeError, match=f"missing field '{missing}'"):
        Envelope.decode(orjson.dumps(broken))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"occurred_at": "2026-07-18T09:30:15"}, id="naive-datetime"),
        pytest.param({"occurred_at": "yesterday"}, id="not-a-datetime"),
        pytest.param({"occurred_at": 1784361600}, id="epoch-number"),
        pytest.param({"event_id": "not-a-uuid"}, id="bad-uuid"),
        pytest.param({"event_id": 42}, id="numeric-uuid"),
        pytest.param({"kind": 7}, id="kind-not-string"),
        pytest.param({"correlation_id": None}, id="correlation-null"),
        pytest.param({"payload": [1, 2]}, id="payload-not-object"),
        pytest.param({"schema_version": "1"}, id="version-not-int"),
        pytest.param({"schema_version": SCHEMA_VERSION + 1}, id="newer-version"),
    ],
)
def test_decode_refuses_bad_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.decode(orjson.dumps(document(**changes)))


def test_newer_schema_version_says_so() -> None:
    with pytest.raises(EnvelopeError, match="newer than ours"):
        Envelope.decode(orjson.dumps(document(schema_version=SCHEMA_VERSION + 1)))


def test_naive_datetime_says_so() -> None:
    with pytest.raises(EnvelopeError, match="UTC offset"):
        Envelope.decode(orjson.dumps(document(occurred_at="2026-07-18T09:30:15")))


def test_unknown_extra_fields_are_ignored() -> None:
    # A newer producer may add optional fields without bumping the version.
    assert Envelope.decode(orjson.dumps(document(extra="x"))) == sample()
