"""audit's core: what a delivery becomes in the log, and how a batch is numbered."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from civicline.audit.canonical import entry_leaf_hash
from civicline.audit.core import (
    AUDIT_CHECKPOINT,
    AuditRecord,
    TreeHead,
    UnauditableDelivery,
    checkpoint_due,
    entries_for,
    number_batch,
    record_from_delivery,
    stored_source,
    subtrees_to_store,
    tree_head_envelope,
)
from civicline.audit.merkle import Subtree
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


def test_entries_carry_their_seq_the_batch_time_and_the_leaf_of_what_is_stored() -> None:
    raw = record(2, raw_body=b"\x00raw", signature=SIGNATURE)
    rows = entries_for([(7, record(1)), (8, raw)], RECEIVED_AT)
    assert [row.entry.seq for row in rows] == [7, 8]
    assert {row.entry.recorded_at for row in rows} == {RECEIVED_AT}
    assert rows[0].entry.payload_json == record(1).payload_json()
    assert rows[1].entry.raw_body_sha256 == hashlib.sha256(b"\x00raw").digest()
    assert all(row.leaf_hash == entry_leaf_hash(row.entry) for row in rows)


def test_only_every_fourth_level_of_subtrees_is_stored() -> None:
    completed = [Subtree(level, 0, bytes(32)) for level in range(1, 13)]
    assert [s.level for s in subtrees_to_store(completed)] == [4, 8, 12]


@pytest.mark.parametrize(
    ("level", "index", "source"),
    [
        (0, 5, (0, 5, 1)),
        (3, 2, (0, 16, 8)),
        (4, 3, (4, 3, 1)),
        (6, 1, (4, 4, 4)),
        (11, 1, (8, 8, 8)),
    ],
)
def test_any_perfect_subtree_is_at_most_eight_stored_hashes(
    level: int, index: int, source: tuple[int, int, int]
) -> None:
    assert stored_source(level, index) == source


def test_a_tree_head_event_has_a_stable_id() -> None:
    head = TreeHead(42, bytes(range(32)), RECEIVED_AT, "note\n")
    envelope = tree_head_envelope(head, "vote.example.gov/audit")
    assert envelope.kind == AUDIT_CHECKPOINT
    assert envelope.event_id == tree_head_envelope(head, "vote.example.gov/audit").event_id
    assert envelope.payload["tree_size"] == 42
    assert envelope.payload["checkpoint"] == "note\n"


@pytest.mark.parametrize(
    ("tree_size", "last_signed", "other", "forced", "due"),
    [
        (0, 0, False, True, False),  # nothing to sign
        (10, 10, True, True, False),  # one head per size
        (11, 10, False, False, False),  # only checkpoint events since: no loop
        (11, 10, True, False, True),
        (11, 10, False, True, True),  # on demand
    ],
)
def test_when_a_checkpoint_is_due(
    tree_size: int, last_signed: int, other: bool, forced: bool, due: bool
) -> None:
    assert (
        checkpoint_due(
            tree_size=tree_size,
            last_signed=last_signed,
            other_than_checkpoints=other,
            forced=forced,
        )
        is due
    )


def audit_envelope(kind: str) -> dict[str, Any]:
    envelope = Envelope(
        event_id=uuid.uuid4(),
        kind=kind,
        occurred_at=RECEIVED_AT,
        correlation_id=f"forged:{kind}",
        payload={"first_seq": 100, "end_seq": 101, "retired": [[0, 10**12]]},
    )
    return {
        "routing_key": "message.voting",  # the routing key does not make the kind
        "body": envelope.encode(),
        "message_id": str(envelope.event_id),
        "headers": {},
        "content_type": "application/vnd.civicline.event+json",
    }


@pytest.mark.parametrize("kind", ["audit.retention", "audit.access", "audit.erasure", "audit.x"])
def test_the_audits_own_records_are_never_taken_from_the_bus(kind: str) -> None:
    with pytest.raises(UnauditableDelivery, match=f"{kind} events are the audit's own"):
        record_from_delivery(**audit_envelope(kind))


def test_a_checkpoint_coming_back_on_the_bus_is_logged() -> None:
    record = record_from_delivery(**audit_envelope(AUDIT_CHECKPOINT))
    assert record.kind == AUDIT_CHECKPOINT
