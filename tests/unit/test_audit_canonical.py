"""The canonical encoding (docs/audit-log.md, version 1): pinned bytes, every field covered."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from civicline.audit.canonical import LogEntry, canonical_bytes, entry_leaf_hash, microseconds

ENTRY = LogEntry(
    seq=258,
    event_id=uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"),
    kind="message.voting",
    occurred_at=datetime(2026, 7, 18, 9, 30, 15, 123456, tzinfo=UTC),
    recorded_at=datetime(2026, 7, 18, 9, 30, 16, tzinfo=UTC),
    correlation_id="wamid.A",
    schema_version=1,
    payload_json='{"text":"투표"}',
    raw_body_sha256=hashlib.sha256(b"raw").digest(),
    signature="sha256=ab",
)


def test_the_encoding_is_pinned() -> None:
    expected = (
        "01"  # encoding version
        + "0000000000000102"  # seq 258
        + "00112233445566778899aabbccddeeff"
        + "0000000e"
        + b"message.voting".hex()
        + (1784367015123456).to_bytes(8, "big").hex()
        + (1784367016000000).to_bytes(8, "big").hex()
        + "00000007"
        + b"wamid.A".hex()
        + "00000001"
        + "00000011"
        + '{"text":"투표"}'.encode().hex()
        + "01"
        + hashlib.sha256(b"raw").hexdigest()
        + "01"
        + "00000009"
        + b"sha256=ab".hex()
    )
    assert canonical_bytes(ENTRY).hex() == expected
    assert entry_leaf_hash(ENTRY) == hashlib.sha256(b"\x00" + bytes.fromhex(expected)).digest()


def test_absent_raw_body_and_signature_are_single_zero_bytes() -> None:
    bare = dataclasses.replace(ENTRY, raw_body_sha256=None, signature=None)
    assert canonical_bytes(bare).endswith(b'{"text":"\xed\x88\xac\xed\x91\x9c"}\x00\x00')


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 259},
        {"event_id": uuid.UUID(int=1)},
        {"kind": "message.voting "},
        {"occurred_at": ENTRY.occurred_at + timedelta(microseconds=1)},
        {"recorded_at": ENTRY.recorded_at + timedelta(microseconds=1)},
        {"correlation_id": "wamid.B"},
        {"schema_version": 2},
        {"payload_json": '{"text": "투표"}'},
        {"raw_body_sha256": hashlib.sha256(b"raw!").digest()},
        {"raw_body_sha256": None},
        {"signature": "sha256=ac"},
        {"signature": None},
        {"signature": ""},
    ],
)
def test_every_stored_field_is_covered_by_the_leaf(change: dict[str, Any]) -> None:
    assert entry_leaf_hash(dataclasses.replace(ENTRY, **change)) != entry_leaf_hash(ENTRY)


def test_field_boundaries_cannot_be_shifted() -> None:
    # Length prefixes: moving a character from one text field to the next changes the bytes.
    moved = dataclasses.replace(ENTRY, kind="message.votin", correlation_id="gwamid.A")
    assert canonical_bytes(moved) != canonical_bytes(ENTRY)


def test_the_raw_body_is_covered_through_its_hash() -> None:
    body = b'{"object":"whatsapp_business_account"}\x00\xff'
    entry = LogEntry.with_raw_body(
        seq=ENTRY.seq,
        event_id=ENTRY.event_id,
        kind=ENTRY.kind,
        occurred_at=ENTRY.occurred_at,
        recorded_at=ENTRY.recorded_at,
        correlation_id=ENTRY.correlation_id,
        schema_version=ENTRY.schema_version,
        payload_json=ENTRY.payload_json,
        raw_body=body,
        signature=ENTRY.signature,
    )
    assert entry.raw_body_sha256 == hashlib.sha256(body).digest()


def test_timestamps_are_instants_to_the_microsecond() -> None:
    seoul = ENTRY.occurred_at.astimezone(timezone(timedelta(hours=9)))
    assert microseconds(seoul) == microseconds(ENTRY.occurred_at)
    before_1970 = datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert microseconds(before_1970) == -1
    with pytest.raises(ValueError, match="UTC offset"):
        microseconds(datetime(2026, 7, 18))
