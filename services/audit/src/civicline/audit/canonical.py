"""The canonical bytes of one audit log entry, whose leaf hash the Merkle tree is built from.

Specified in docs/audit-log.md (encoding versions 1 and 2); this module is its reference
implementation, and `audit_leaf_hash()` (migrations 0004 and 0030) computes the same bytes in
SQL. Version 2 adds the clear intent, the citizens' pseudonyms and data key ids, and hashes a
sealed payload's ciphertext, so erasing a citizen's key leaves every leaf verifiable.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from civicline.audit import merkle

ENCODING_VERSION = 1
SEALED_VERSION = 2
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
    payload_json: str | None
    raw_body_sha256: bytes | None = None
    signature: str | None = None
    version: int = ENCODING_VERSION
    intent: str | None = None
    subjects: tuple[bytes, ...] = ()
    key_ids: tuple[uuid.UUID, ...] = ()
    sealed_payload: bytes | None = None

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
        payload_json: str | None,
        raw_body: bytes | None,
        signature: str | None,
        version: int = ENCODING_VERSION,
        intent: str | None = None,
        subjects: tuple[bytes, ...] = (),
        key_ids: tuple[uuid.UUID, ...] = (),
        sealed_payload: bytes | None = None,
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
            version=version,
            intent=intent,
            subjects=subjects,
            key_ids=key_ids,
            sealed_payload=sealed_payload,
        )


def microseconds(instant: datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z, exact (Postgres keeps timestamptz to the µs)."""
    if instant.tzinfo is None:
        raise ValueError("a timestamp in the audit log must carry its UTC offset")
    return (instant - _EPOCH) // _MICROSECOND


def _text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return struct.pack(">I", len(encoded)) + encoded


def _optional_text(value: str | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + _text(value)


def _list(items: tuple[bytes, ...]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(items)


def canonical_bytes(entry: LogEntry) -> bytes:
    """Fixed field order, big-endian integers, length-prefixed UTF-8 (docs/audit-log.md)."""
    if entry.raw_body_sha256 is not None and len(entry.raw_body_sha256) != 32:
        raise ValueError("raw_body_sha256 must be a SHA-256 digest")
    head = [
        struct.pack(">BQ", entry.version, entry.seq),
        entry.event_id.bytes,
        _text(entry.kind),
        struct.pack(">qq", microseconds(entry.occurred_at), microseconds(entry.recorded_at)),
        _text(entry.correlation_id),
        struct.pack(">i", entry.schema_version),
    ]
    tail = [
        b"\x00" if entry.raw_body_sha256 is None else b"\x01" + entry.raw_body_sha256,
        _optional_text(entry.signature),
    ]
    if entry.version == ENCODING_VERSION:
        if entry.payload_json is None:
            raise ValueError("an encoding v1 entry has a clear payload")
        return b"".join([*head, _text(entry.payload_json), *tail])
    if entry.version != SEALED_VERSION:
        raise ValueError(f"unknown leaf encoding version {entry.version}")
    if (entry.payload_json is None) == (entry.sealed_payload is None):
        raise ValueError("an encoding v2 entry has either a clear or a sealed payload")
    if any(len(subject) != 32 for subject in entry.subjects):
        raise ValueError("a subject is a 32-byte pseudonym")
    if entry.sealed_payload is not None:
        payload = b"\x01" + hashlib.sha256(entry.sealed_payload).digest()
    else:
        assert entry.payload_json is not None
        payload = b"\x00" + _text(entry.payload_json)
    middle = [
        _optional_text(entry.intent),
        _list(entry.subjects),
        _list(tuple(key_id.bytes for key_id in entry.key_ids)),
        payload,
    ]
    return b"".join([*head, *middle, *tail])


def entry_leaf_hash(entry: LogEntry) -> bytes:
    """SHA-256(0x00 || canonical bytes): the entry's leaf in the RFC 6962 tree."""
    return merkle.leaf_hash(canonical_bytes(entry))
