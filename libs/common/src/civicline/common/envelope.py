"""The event envelope every service publishes, and its orjson codec.

Event ids are deterministic (UUIDv5 of the event's natural key), so a webhook that Meta
redelivers, or a message a consumer re-processes after a crash, yields the same ids and
every consumer can deduplicate on them. See docs/events.md for the kinds and their keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

SCHEMA_VERSION = 1
CONTENT_TYPE = "application/vnd.civicline.event+json"

# Fixed namespace for civicline's UUIDv5 event ids; changing it changes every id.
EVENT_NAMESPACE = uuid.UUID("6f1c7a52-5e0b-4c1f-9a55-8f3d2b1e0c47")


class EnvelopeError(ValueError):
    """Bytes that are not a valid envelope; the message says what is wrong."""


def event_id(*natural_key: str) -> uuid.UUID:
    """The id of the event identified by `natural_key`, the same on every redelivery."""
    return uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(natural_key))


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Envelope:
    event_id: uuid.UUID
    kind: str
    occurred_at: datetime
    correlation_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "kind": self.kind,
                "occurred_at": self.occurred_at,
                "correlation_id": self.correlation_id,
                "schema_version": self.schema_version,
                "payload": self.payload,
            },
            option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS,
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EnvelopeError(f"not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise EnvelopeError("an envelope must be a JSON object")
        try:
            occurred_at = datetime.fromisoformat(document["occurred_at"])
            envelope = cls(
                event_id=uuid.UUID(document["event_id"]),
                kind=document["kind"],
                occurred_at=occurred_at,
                correlation_id=document["correlation_id"],
                payload=document["payload"],
                schema_version=document["schema_version"],
            )
        except KeyError as exc:
            raise EnvelopeError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise EnvelopeError(f"bad field: {exc}") from None
        if not isinstance(envelope.kind, str) or not isinstance(envelope.correlation_id, str):
            raise EnvelopeError("kind and correlation_id must be strings")
        if "\x00" in envelope.kind or "\x00" in envelope.correlation_id:
            # Postgres text cannot hold NUL; such an id could never be stored or queried.
            raise EnvelopeError("kind and correlation_id must not contain NUL")
        if not isinstance(envelope.payload, dict) or not isinstance(envelope.schema_version, int):
            raise EnvelopeError("payload must be an object and schema_version an integer")
        if occurred_at.tzinfo is None:
            raise EnvelopeError("occurred_at must carry a UTC offset")
        if envelope.schema_version > SCHEMA_VERSION:
            raise EnvelopeError(f"schema version {envelope.schema_version} is newer than ours")
        return envelope
