"""The audit service's pure core: what one delivery becomes in the log, and how a batch is
numbered. No I/O here; adapters.py writes what these functions decide."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from civicline.common.envelope import SCHEMA_VERSION, Envelope, EnvelopeError
from civicline.common.topology import INBOUND_WEBHOOK


class UnauditableDelivery(ValueError):
    """A delivery that cannot become an audit record; it is dead-lettered for inspection."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event_id: uuid.UUID
    kind: str
    occurred_at: datetime
    correlation_id: str
    schema_version: int
    payload: Mapping[str, Any]
    raw_body: bytes | None = None
    signature: str | None = None

    def payload_json(self) -> str:
        return orjson.dumps(self.payload, option=orjson.OPT_SORT_KEYS).decode()


def record_from_delivery(
    *,
    routing_key: str,
    body: bytes,
    message_id: str | None,
    headers: Mapping[str, Any],
    content_type: str | None,
) -> AuditRecord:
    """Turn one AMQP delivery into the record the log keeps."""
    if routing_key == INBOUND_WEBHOOK:
        return _raw_webhook_record(body, message_id, headers, content_type)
    try:
        envelope = Envelope.decode(body)
    except EnvelopeError as exc:
        raise UnauditableDelivery(f"{routing_key}: {exc}") from None
    return AuditRecord(
        event_id=envelope.event_id,
        kind=envelope.kind,
        occurred_at=envelope.occurred_at,
        correlation_id=envelope.correlation_id,
        schema_version=envelope.schema_version,
        payload=envelope.payload,
    )


def _raw_webhook_record(
    body: bytes, message_id: str | None, headers: Mapping[str, Any], content_type: str | None
) -> AuditRecord:
    try:
        raw_event_id = uuid.UUID(str(message_id))
    except ValueError:
        raise UnauditableDelivery(
            f"raw webhook without a valid message id: {message_id!r}"
        ) from None
    received_raw = headers.get("x-received-at")
    try:
        received_at = datetime.fromisoformat(str(received_raw))
    except ValueError:
        received_at = datetime.now(UTC)
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    signature = headers.get("x-hub-signature-256")
    return AuditRecord(
        event_id=raw_event_id,
        kind=INBOUND_WEBHOOK,
        occurred_at=received_at,
        correlation_id=str(raw_event_id),
        schema_version=SCHEMA_VERSION,
        payload={"bytes": len(body), "content_type": content_type},
        raw_body=body,
        signature=str(signature) if signature is not None else None,
    )


def number_batch(
    records: Iterable[AuditRecord], already_logged: Set[uuid.UUID], next_seq: int
) -> list[tuple[int, AuditRecord]]:
    """Give each record not yet in the log the next gapless sequence number, in arrival order.

    Duplicates (redeliveries, or the same event twice in one batch) get no number, so the
    sequence never skips.
    """
    numbered: list[tuple[int, AuditRecord]] = []
    seen = set(already_logged)
    for record in records:
        if record.event_id in seen:
            continue
        seen.add(record.event_id)
        numbered.append((next_seq + len(numbered), record))
    return numbered
