"""The canonical bytes of one audit log entry, whose leaf hash the Merkle tree is built from.

Specified in docs/audit-log.md (encoding version 1); this module is its reference
implementation, and migration 0004's `audit_leaf_hash()` computes the same bytes in SQL.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from civicline.audit import merkle

ENCODING_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """Everything the log stores for one event, as the leaf covers it."""

    seq: int
    event_id: uuid.UUID
    kind: str
    occurred_at: datetime
    recorded_at: datetime
    correlation_id: str
    schema_version: int
    payload_json: str
    raw_body_sha256: bytes | None = None
    signature: str | None = None

    @classmethod
    def with_raw_body(
        cls,
        *,
        seq: int,
        event_id: uuid.UUID,
        kind: str,
        occurred_at: datetime,
        recorded_at: datetime,
        correlation_id: str,
        schema_version: int,
        payload_json: str,
        raw_body: bytes | None,
        signature: str | None,
    ) -> LogEntry:
        return cls(
            seq=seq,
            event_id=event_id,
            kind=kind,
            occurred_at=occurred_at,
            recorded_at=recorded_at,
            correlation_id=correlation_id,
            schema_version=schema_version,
            payload_json=payload_json,
            raw_body_sha256=None if raw_body is None else hashlib.sha256(raw_body).digest(),
            signature=signature,
        )


def microseconds(instant: datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z, exact (Postgres keeps timestamptz to the µs)."""
    if instant.tzinfo is None:
        raise ValueError("a timestamp in the audit log must carry its UTC offset")
    return (instant - _EPOCH) // _MICROSECOND


def _text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return struct.pack(">I", len(encoded)) + encoded


def canonical_bytes(entry: LogEntry) -> bytes:
    """Encoding version 1: fixed field order, big-endian integers, length-prefixed UTF-8."""
    if entry.raw_body_sha256 is not None and len(entry.raw_body_sha256) != 32:
        raise ValueError("raw_body_sha256 must be a SHA-256 digest")
    parts = [
        struct.pack(">BQ", ENCODING_VERSION, entry.seq),
        entry.event_id.bytes,
        _text(entry.kind),
        struct.pack(">qq", microseconds(entry.occurred_at), microseconds(entry.recorded_at)),
        _text(entry.correlation_id),
        struct.pack(">i", entry.schema_version),
        _text(entry.payload_json),
        b"\x00" if entry.raw_body_sha256 is None else b"\x01" + entry.raw_body_sha256,
        b"\x00" if entry.signature is None else b"\x01" + _text(entry.signature),
    ]
    return b"".join(parts)


def entry_leaf_hash(entry: LogEntry) -> bytes:
    """SHA-256(0x00 || canonical bytes): the entry's leaf in the RFC 6962 tree."""
    return merkle.leaf_hash(canonical_bytes(entry))
