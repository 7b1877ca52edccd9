"""What the query API shows of stored rows, pure: an event with its payload opened (when its
citizens' keys still exist), a conversation assembled from its events, an access event."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from civicline.audit import privacy
from civicline.audit.core import AuditRecord
from civicline.audit.query import ACCESS_KIND, ERASURE_KIND, RETENTION_KIND
from civicline.common.envelope import SCHEMA_VERSION

Row = Mapping[str, Any]
# key id -> the unwrapped data key, or None once it was erased.
DataKeys = Mapping[uuid.UUID, bytes | None]


def rfc3339(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_key(row: Row, keys: DataKeys) -> bytes | None:
    """The key the row's payload is sealed with, or None if any of its citizens was erased."""
    data_keys = [keys.get(key_id) for key_id in row["key_ids"] or ()]
    if not data_keys or any(key is None for key in data_keys):
        return None
    return privacy.event_key([key for key in data_keys if key is not None])


def opened(row: Row, keys: DataKeys) -> tuple[Any, bytes | None, bool]:
    """(payload, raw body, erased): what the row says, unsealed where it is sealed."""
    if row["sealed_payload"] is None:
        payload = None if row["payload"] is None else orjson.loads(row["payload"])
        return payload, row["raw_body"], False
    key = event_key(row, keys)
    if key is None:
        return None, None, True
    event_id = row["event_id"]
    payload = orjson.loads(
        privacy.open_sealed(key, event_id, privacy.PAYLOAD_FIELD, row["sealed_payload"])
    )
    raw = row["raw_body"]
    if raw is not None:
        raw = privacy.open_sealed(key, event_id, privacy.RAW_BODY_FIELD, raw)
    return payload, raw, False


def event_document(row: Row, keys: DataKeys, *, with_raw_body: bool = False) -> dict[str, Any]:
    payload, raw_body, erased = opened(row, keys)
    document: dict[str, Any] = {
        "seq": row["seq"],
        "event_id": str(row["event_id"]),
        "kind": row["kind"],
        "intent": row["intent"],
        "occurred_at": rfc3339(row["occurred_at"]),
        "recorded_at": rfc3339(row["recorded_at"]),
        "correlation_id": row["correlation_id"],
        "schema_version": row["schema_version"],
        "leaf_version": row["leaf_version"],
        "leaf_hash": bytes(row["leaf_hash"]).hex(),
        "subjects": [bytes(subject).hex() for subject in row["subjects"] or ()],
        "sealed": row["sealed_payload"] is not None,
        "erased": erased,
        "payload": payload,
        "has_raw_body": row["raw_body"] is not None,
    }
    if with_raw_body:
        document["raw_body"] = None if raw_body is None else base64.b64encode(raw_body).decode()
        document["signature"] = row["signature"]
    return document


def reply_wamids(replies: Sequence[Mapping[str, Any]]) -> list[str]:
    """The message ids of the replies actually sent: their delivery statuses carry them."""
    found = []
    for reply in replies:
        payload = reply.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("wamid"), str):
            found.append(payload["wamid"])
    return found


def conversation(
    message: Mapping[str, Any], related: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """An inbound message with its classification, hand-off, replies and their statuses
    (docs/events.md: replies carry the inbound wamid as correlation id, statuses the reply's)."""
    wamid = message["correlation_id"]
    replies = [
        event
        for event in related
        if event["kind"].startswith("outbound.")
        and event["correlation_id"] in (wamid, f"away:{wamid}")
    ]
    sent = set(reply_wamids(replies))
    payload = message.get("payload") if isinstance(message.get("payload"), dict) else {}
    assert isinstance(payload, dict)
    return {
        "message": message,
        "classification": {
            "intent": message["intent"],
            "language": payload.get("language"),
            "urgent": payload.get("urgent"),
            "handoff": payload.get("handoff"),
        },
        "handoffs": [
            e for e in related if e["kind"].startswith("handoff.") and e["correlation_id"] == wamid
        ],
        "replies": replies,
        "statuses": [
            e for e in related if e["kind"].startswith("status.") and e["correlation_id"] in sent
        ],
    }


def _service_record(kind: str, label: str, payload: dict[str, Any], at: datetime) -> AuditRecord:
    """An event the audit service writes about itself: its own id, nobody's data."""
    record_id = uuid.uuid4()
    return AuditRecord(
        event_id=record_id,
        kind=kind,
        occurred_at=at,
        correlation_id=f"{label}:{record_id}",
        schema_version=SCHEMA_VERSION,
        payload=payload,
    )


def access_record(
    *,
    token_name: str,
    token_id: uuid.UUID,
    role: str,
    method: str,
    endpoint: str,
    query: Mapping[str, Any],
    rows: int | None,
    status: int,
    at: datetime,
) -> AuditRecord:
    """An `audit.access` event: who asked what, and how many rows they got. It names no citizen
    (a citizen filter is recorded as its pseudonym), so it is never sealed."""
    payload = {
        "token": token_name,
        "token_id": str(token_id),
        "role": role,
        "method": method,
        "endpoint": endpoint,
        "query": dict(query),
        "rows": rows,
        "status": status,
    }
    return _service_record(ACCESS_KIND, "access", payload, at)


def erasure_record(
    *,
    subject: bytes,
    key_ids: Sequence[uuid.UUID],
    events: int,
    requested_by: str,
    at: datetime,
) -> AuditRecord:
    """An `audit.erasure` event: whose data keys were destroyed, how many events they sealed."""
    payload = {
        "subject": subject.hex(),
        "key_ids": [str(key_id) for key_id in key_ids],
        "events": events,
        "requested_by": requested_by,
    }
    return _service_record(ERASURE_KIND, "erasure", payload, at)


def retention_record(
    *,
    partition: str,
    first_seq: int,
    end_seq: int,
    recorded_from: datetime | None,
    recorded_until: datetime,
    retired: Sequence[tuple[int, int]],
    export_sha256: str,
    requested_by: str,
    at: datetime,
) -> AuditRecord:
    """An `audit.retention` event: the month whose events [first_seq, end_seq) were detached
    from the log (recorded from `recorded_from`, None for the start, until `recorded_until`),
    the export that holds them, and every range retired so far, this one included: the
    latest such event is never in a retired month, so it alone says what may be missing."""
    payload = {
        "partition": partition,
        "first_seq": first_seq,
        "end_seq": end_seq,
        "events": end_seq - first_seq,
        "recorded_from": None if recorded_from is None else recorded_from.isoformat(),
        "recorded_until": recorded_until.isoformat(),
        "retired": [[first, end] for first, end in retired],
        "export_sha256": export_sha256,
        "requested_by": requested_by,
    }
    return _service_record(RETENTION_KIND, "retention", payload, at)
