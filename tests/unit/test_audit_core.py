"""audit's core: what a delivery becomes in the log, and how a batch is numbered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from civicline.audit.core import (
    AuditRecord,
    UnauditableDelivery,
    number_batch,
    record_from_delivery,
)
from civicline.common.envelope import SCHEMA_VERSION, Envelope, event_id
from civicline.common.topology import INBOUND_WEBHOOK

RAW_BODY = b'{"object":"whatsapp_business_account","text":"\\ud22c\\ud45c"}\n'
SIGNATURE = "sha256=" + "ab" * 32
RECEIVED_AT = datetime(2026, 7, 18, 9, 30, 15, 250000, tzinfo=UTC)


def raw_delivery(**changes: Any) -> dict[str, Any]:
    delivery: dict[str, Any] = {
        "routing_key": INBOUND_WEBHOOK,
        "body": RAW_BODY,
        "message_id": str(event_id("webhook", "digest")),
        "headers": {
            "x-hub-signature-256": SIGNATURE,
            "x-received-at": RECEIVED_AT.isoformat(),
            "x-correlation-id": "ignored",
        },
        "content_type": "application/json",
    }
    delivery.update(changes)
    return delivery


def test_raw_webhook_keeps_the_exact_bytes_and_signature() -> None:
    record = record_from_delivery(**raw_delivery())
    assert record.kind == INBOUND_WEBHOOK
    assert record.event_id == event_id("webhook", "digest")
    assert record.correlation_id == str(record.event_id)
    assert record.raw_body == RAW_BODY
    assert record.signature == SIGNATURE
    assert record.occurred_at == RECEIVED_AT
    assert record.schema_version == SCHEMA_VERSION
    assert record.payload == {"bytes": len(RAW_BODY), "content_type": "application/json"}


def test_raw_webhook_with_an_offset_timestamp_keeps_the_instant() -> None:
    seoul = RECEIVED_AT.astimezone(timezone(timedelta(hours=9)))
    headers = {"x-received-at": seoul.isoformat()}
    record = record_from_delivery(**raw_delivery(headers=headers))
    assert record.occurred_at == RECEIVED_AT
    assert record.signature is None


def test_raw_webhook_without_a_receive_time_is_stamped_now() -> None:
    before = datetime.now(UTC)
    record = record_from_delivery(**raw_delivery(headers={}))
    assert before <= record.occurred_at <= datetime.now(UTC)
    assert record.occurred_at.tzinfo is not None


def test_raw_webhook_naive_receive_time_is_taken_as_utc() -> None:
    naive = RECEIVED_AT.replace(tzinfo=None).isoformat()
    record = record_from_delivery(**raw_delivery(headers={"x-received-at": naive}))
    assert record.occurred_at == RECEIVED_AT


@pytest.mark.parametrize("message_id", [None, "", "not-a-uuid"])
def test_raw_webhook_without_a_valid_message_id_is_unauditable(message_id: str | None) -> None:
    with pytest.raises(UnauditableDelivery, match="message id"):
        record_from_delivery(**raw_delivery(message_id=message_id))


def test_envelope_becomes_its_record() -> None:
    envelope = Envelope(
        event_id=event_id("message", "wamid.A"),
        kind="message.voting",
        occurred_at=RECEIVED_AT,
        correlation_id="wamid.A",
        payload={"text": "投票所", "urgent": False},
    )
    record = record_from_delivery(
        routing_key="message.voting",
        body=envelope.encode(),
        message_id=str(envelope.event_id),
        headers={},
        content_type="application/vnd.civicline.event+json",
    )
    assert record == AuditRecord(
        event_id=envelope.event_id,
        kind="message.voting",
        occurred_at=RECEIVED_AT,
        correlation_id="wamid.A",
        schema_version=SCHEMA_VERSION,
        payload={"text": "投票所", "urgent": False},
    )
    assert record.raw_body is None
    assert record.signature is None


@pytest.mark.parametrize(
    "body",
    [b"garbage", b"", b"[]", b'{"kind":"message.voting"}', b"\x00\xff"],
)
def test_garbage_is_unauditable(body: bytes) -> None:
    with pytest.raises(UnauditableDelivery, match=r"^message\.unknown: "):
        record_from_delivery(
            routing_key="message.unknown",
            body=body,
            message_id=str(uuid.uuid4()),
            headers={},
            content_type=None,
        )


def test_payload_json_is_canonical() -> None:
    canonical = record(1, payload={"b": 1, "a": "투표"})
    assert canonical.payload_json() == '{"a":"투표","b":1}'


def record(n: int, **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "event_id": event_id("test", str(n)),
        "kind": "message.test",
        "occurred_at": RECEIVED_AT,
        "correlation_id": f"c{n}",
        "schema_version": SCHEMA_VERSION,
        "payload": {"n": n},
    }
    fields.update(changes)
    return AuditRecord(**fields)


def test_number_batch_is_gapless_from_next_seq() -> None:
    records = [record(n) for n in range(5)]
    numbered = number_batch(records, set(), 17)
    assert numbered == [(17 + i, r) for i, r in enumerate(records)]


def test_number_batch_skips_logged_ids_without_gaps() -> None:
    records = [record(n) for n in range(6)]
    logged = {records[0].event_id, records[3].event_id}
    numbered = number_batch(records, logged, 10)
    assert [seq for seq, _ in numbered] == [10, 11, 12, 13]
    assert [r for _, r in numbered] == [records[1], records[2], records[4], records[5]]


def test_number_batch_keeps_the_first_of_duplicates_in_a_batch() -> None:
    first, second = record(1), record(2)
    again = record(1, correlation_id="redelivered")
    numbered = number_batch([first, second, again, second], set(), 0)
    assert numbered == [(0, first), (1, second)]


def test_number_batch_of_nothing_new_is_empty() -> None:
    records = [record(n) for n in range(3)]
    assert number_batch(records, {r.event_id for r in records}, 5) == []
    assert number_batch([], set(), 5) == []


def test_number_batch_does_not_change_already_logged() -> None:
    logged = {record(1).event_id}
    number_batch([record(2)], logged, 0)
    assert logged == {record(1).event_id}
