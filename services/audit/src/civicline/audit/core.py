"""The audit service's pure core: what one delivery becomes in the log, how a batch is
numbered and hashed, which subtrees are stored, and what a tree head event says. No I/O here;
adapters.py writes what these functions decide."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from civicline.audit import privacy
from civicline.audit.canonical import SEALED_VERSION, LogEntry, entry_leaf_hash
from civicline.audit.merkle import Subtree
from civicline.common.envelope import SCHEMA_VERSION, Envelope, EnvelopeError, event_id
from civicline.common.topology import INBOUND_WEBHOOK

# The routing key of the signed tree heads the audit service publishes. It consumes `#`, so
# each one comes back and becomes a leaf itself; such leaves alone never make a new head due.
AUDIT_CHECKPOINT = "audit.checkpoint"
# The prefix of every kind the audit service writes itself.
AUDIT_KINDS = "audit."

# Perfect subtrees are stored at every SUBTREE_STEP-th level: any perfect subtree hash is then
# at most 2**(SUBTREE_STEP - 1) stored hashes away. Fixed by migration 0004's CHECK.
SUBTREE_STEP = 4


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

    def intent(self) -> str | None:
        """The classification, kept in clear for auditors' filters (never personal data)."""
        intent = self.payload.get("intent")
        return intent if isinstance(intent, str) and intent else None

    def citizens(self) -> list[str]:
        """The ids of the citizens this event is about (wa_ids, business-scoped user ids)."""
        if self.raw_body is not None:
            return privacy.citizens_in_webhook(self.raw_body)
        return privacy.citizens_in_payload(self.payload)


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
    if envelope.kind.startswith(AUDIT_KINDS) and envelope.kind != AUDIT_CHECKPOINT:
        # The log's own records (access, erasure, retention) are appended by this service
        # alone, never taken from the bus: a forged audit.retention would otherwise claim a
        # range retired to `verify` and to exports, and a forged access or erasure would be
        # a false record of who read or destroyed what.
        raise UnauditableDelivery(
            f"{routing_key}: {envelope.kind} events are the audit's own and never come from the bus"
        )
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


@dataclass(frozen=True, slots=True)
class NumberedEntry:
    """A record with its place in the log: the row to insert and its leaf hash."""

    record: AuditRecord
    entry: LogEntry
    leaf_hash: bytes
    raw_body: bytes | None  # as stored: sealed when the event is about citizens


@dataclass(frozen=True, slots=True)
class Sealing:
    """What sealing a batch needs: each record's subjects, and each subject's live data key."""

    subjects: Mapping[uuid.UUID, tuple[bytes, ...]]
    keys: Mapping[bytes, tuple[uuid.UUID, bytes]]
    random: privacy.Random = os.urandom


@dataclass(frozen=True, slots=True)
class Sealed:
    """An event's payload and raw body sealed under the keys named by `key_ids`."""

    key_ids: tuple[uuid.UUID, ...]
    payload: bytes
    raw_body: bytes | None


def seal_records(records: Iterable[AuditRecord], sealing: Sealing) -> dict[uuid.UUID, Sealed]:
    """Seal each record about citizens under its citizens' data keys.

    One cipher per set of citizens, never kept past the call (an erased key must leave no
    copy), and the nonces drawn from the random source in one call: AES-GCM needs a fresh
    one for every field sealed under a key, and a system call each cost more than the sealing.
    """
    todo = [
        (record, subjects)
        for record in records
        if (subjects := sealing.subjects.get(record.event_id, ()))
    ]
    fields = sum(1 + (record.raw_body is not None) for record, _ in todo)
    drawn = sealing.random(privacy.NONCE_SIZE * fields) if fields else b""
    if len(drawn) != privacy.NONCE_SIZE * fields:
        # A short nonce would still encrypt, into a row that never opens again.
        raise ValueError(f"the random source gave {len(drawn)} bytes for {fields} nonces")
    nonces = (
        drawn[at : at + privacy.NONCE_SIZE] for at in range(0, len(drawn), privacy.NONCE_SIZE)
    )
    ciphers: dict[tuple[uuid.UUID, ...], Any] = {}
    sealed: dict[uuid.UUID, Sealed] = {}
    for record, subjects in todo:
        key_ids = tuple(sealing.keys[subject][0] for subject in subjects)
        cipher = ciphers.get(key_ids)
        if cipher is None:
            cipher = privacy.event_cipher([sealing.keys[subject][1] for subject in subjects])
            ciphers[key_ids] = cipher
        payload = privacy.seal_with(
            cipher,
            record.event_id,
            privacy.PAYLOAD_FIELD,
            record.payload_json().encode(),
            next(nonces),
        )
        raw_body = None
        if record.raw_body is not None:
            raw_body = privacy.seal_with(
                cipher, record.event_id, privacy.RAW_BODY_FIELD, record.raw_body, next(nonces)
            )
        sealed[record.event_id] = Sealed(key_ids, payload, raw_body)
    return sealed


def entries_for(
    numbered: Iterable[tuple[int, AuditRecord]],
    recorded_at: datetime,
    sealing: Sealing | None = None,
) -> list[NumberedEntry]:
    """The rows a numbered batch becomes (encoding v2), each with the leaf hash of exactly what
    is stored. With `sealing`, an event about citizens has its payload and raw body sealed."""
    numbered = list(numbered)
    sealed = seal_records((r for _, r in numbered), sealing) if sealing is not None else {}
    result = []
    for seq, record in numbered:
        done = sealed.get(record.event_id)
        raw_body = done.raw_body if done else record.raw_body
        entry = LogEntry.with_raw_body(
            seq=seq,
            event_id=record.event_id,
            kind=record.kind,
            occurred_at=record.occurred_at,
            recorded_at=recorded_at,
            correlation_id=record.correlation_id,
            schema_version=record.schema_version,
            payload_json=None if done else record.payload_json(),
            raw_body=raw_body,
            signature=record.signature,
            version=SEALED_VERSION,
            intent=record.intent(),
            subjects=sealing.subjects[record.event_id] if done and sealing else (),
            key_ids=done.key_ids if done else (),
            sealed_payload=done.payload if done else None,
        )
        result.append(NumberedEntry(record, entry, entry_leaf_hash(entry), raw_body))
    return result


def subtrees_to_store(completed: Iterable[Subtree]) -> list[Subtree]:
    return [s for s in completed if s.level % SUBTREE_STEP == 0]


def stored_source(level: int, index: int) -> tuple[int, int, int]:
    """Where the perfect subtree (level, index) comes from: (stored level, first position at
    that level, how many). Stored level 0 means leaf hashes from audit_log."""
    base = level - level % SUBTREE_STEP
    spread = level - base
    return base, index << spread, 1 << spread


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed tree head as stored in audit_tree_head."""

    tree_size: int
    root_hash: bytes
    signed_at: datetime
    checkpoint: str


def tree_head_envelope(head: TreeHead, origin: str) -> Envelope:
    """The `audit.checkpoint` event announcing a tree head; its id is fixed by the log and
    size, so a head published twice is logged once."""
    return Envelope(
        event_id=event_id(AUDIT_CHECKPOINT, origin, str(head.tree_size)),
        kind=AUDIT_CHECKPOINT,
        occurred_at=head.signed_at,
        correlation_id=f"{origin}/{head.tree_size}",
        payload={
            "origin": origin,
            "tree_size": head.tree_size,
            "root_hash": head.root_hash.hex(),
            "checkpoint": head.checkpoint,
        },
    )


def checkpoint_due(
    *, tree_size: int, last_signed: int, other_than_checkpoints: bool, forced: bool
) -> bool:
    """Whether to sign a head now. A head is never signed twice for one size, and never only
    because checkpoint events were logged: publishing a head must not make the next one due."""
    if tree_size <= last_signed:
        return False
    return forced or other_than_checkpoints
