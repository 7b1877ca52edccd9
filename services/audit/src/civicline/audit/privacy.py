"""Citizens' privacy in the audit log, pure: who an event is about (as keyed pseudonyms), and the
sealing of its payload and raw body under those citizens' data keys (crypto-shredding).

- A citizen's pseudonym is HMAC-SHA256(pseudonym key, their id): the wa_id (digits only, so
  "+82 10-1234-5678" and "821012345678" are one citizen) or the business-scoped user id.
- Each citizen has a random 256-bit data key, stored only wrapped (AES-256-GCM) by the master
  key. An event about citizens c1..cn is sealed with AES-256-GCM under
  HKDF-SHA256(k1 ‖ … ‖ kn): destroying any one of those keys makes it unreadable.
- The sealed bytes are `nonce (12) ‖ ciphertext ‖ tag (16)`; the associated data binds them to
  the event id and to which field they are, so sealed bytes cannot be moved between rows.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_SIZE = 12
KEY_SIZE = 32
PAYLOAD_FIELD = b"payload"
RAW_BODY_FIELD = b"raw_body"

# Top-level payload fields that name a citizen, in the events docs/events.md lists.
_CITIZEN_FIELDS = (
    "from",
    "from_user_id",
    "citizen",
    "to",
    "recipient",
    "recipient_id",
    "recipient_user_id",
)
# Fields of a raw webhook (anywhere in its JSON) that name a citizen.
_WEBHOOK_FIELDS = frozenset(
    {"wa_id", "user_id", "from", "from_user_id", "recipient_id", "recipient_user_id"}
)
_PHONE = re.compile(r"^\+?[0-9 ()\-.]{5,}$")

Random = Callable[[int], bytes]


class PrivacyError(ValueError):
    """Sealed data that cannot be opened: its key was erased, or it is not what it claims."""


def derive_secret(configured: str, purpose: str) -> bytes:
    """A 256-bit key from a configured secret (any high-entropy string), one per purpose."""
    if len(configured) < 32:
        raise ValueError("must be at least 32 characters of random (e.g. `openssl rand -hex 32`)")
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=purpose.encode()
    ).derive(configured.encode())


def normalise_citizen(citizen: str) -> str:
    """A phone number as WhatsApp writes wa_ids (digits only); any other id unchanged."""
    text = citizen.strip()
    if _PHONE.match(text):
        return re.sub(r"[^0-9]", "", text)
    return text


# Pseudonyms remembered per process, by the citizen id as an event names it: a citizen's
# message, its reply and their statuses each name the citizen again, and one HMAC and one
# normalisation are most of an event's cost to pseudonymise. The ids are in the process's
# memory anyway while it handles their events; an erased citizen's id stays until the map
# is cleared (the pseudonym can always be recomputed with the pseudonym key, so this keeps
# nothing that crypto-shredding destroys).
PSEUDONYMS_REMEMBERED = 65_536


@dataclass(frozen=True, slots=True)
class Pseudonymiser:
    key: bytes = field(repr=False)
    _known: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, citizen: str) -> bytes:
        known = self._known.get(citizen)
        if known is None:
            known = hmac.digest(self.key, normalise_citizen(citizen).encode(), "sha256")
            if len(self._known) >= PSEUDONYMS_REMEMBERED:
                self._known.clear()
            self._known[citizen] = known
        return known


def citizens_in_payload(payload: Mapping[str, Any]) -> list[str]:
    """The citizen ids an envelope's payload names, in field order, without repeats: its
    citizen fields, then a campaign job's `recipients` ([wa_id, language] pairs)."""
    named = [payload.get(name) for name in _CITIZEN_FIELDS]
    recipients = payload.get("recipients")
    if isinstance(recipients, list):
        named += [entry[0] if isinstance(entry, list) and entry else entry for entry in recipients]
    return list(dict.fromkeys(value for value in named if isinstance(value, str) and value))


def citizens_in_webhook(body: bytes) -> list[str]:
    """The citizen ids a raw webhook body names (contacts, senders, status recipients)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    found: list[str] = []
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name, value in node.items():
                if name in _WEBHOOK_FIELDS and isinstance(value, str | int) and str(value):
                    if str(value) not in found:
                        found.append(str(value))
                elif isinstance(value, dict | list) and name != "context":
                    # A reply's `context.from` is our own business number, not a citizen.
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def subjects_of(citizens: Iterable[str], pseudonymise: Pseudonymiser) -> tuple[bytes, ...]:
    """Distinct pseudonyms, sorted, so the same citizens always give the same subjects."""
    return tuple(sorted({pseudonymise(citizen) for citizen in citizens}))


def _aesgcm(key: bytes) -> AESGCM:
    return AESGCM(key)


@functools.lru_cache(maxsize=4)
def _master(master: bytes) -> AESGCM:
    """The master key's cipher, set up once: it wraps and unwraps every data key. (Data keys'
    ciphers are never kept past a batch, so an erased key leaves no copy behind.)"""
    return AESGCM(master)


def wrap_key(
    master: bytes, key_id: uuid.UUID, data_key: bytes, random: Random = os.urandom
) -> bytes:
    nonce = random(NONCE_SIZE)
    return nonce + _master(master).encrypt(nonce, data_key, b"civicline-audit-key" + key_id.bytes)


def unwrap_key(master: bytes, key_id: uuid.UUID, wrapped: bytes) -> bytes:
    try:
        return _master(master).decrypt(
            wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], b"civicline-audit-key" + key_id.bytes
        )
    except InvalidTag:
        raise PrivacyError(f"data key {key_id} does not open with this master key") from None


_EVENT_KEY_INFO = b"civicline audit event v2"
_NO_SALT = bytes(hashlib.sha256().digest_size)


def event_key(data_keys: Sequence[bytes]) -> bytes:
    """The key an event about these citizens (keys in the row's key_ids order) is sealed with:
    HKDF-SHA256 (RFC 5869) of the keys joined, no salt, one block of output. Written out as its
    two HMACs, a quarter of the cost of setting up an HKDF object per event; the unit tests
    check it against `cryptography`'s HKDF."""
    if not data_keys:
        raise ValueError("an event is sealed for at least one citizen")
    pseudo_random = hmac.digest(_NO_SALT, b"".join(data_keys), "sha256")
    return hmac.digest(pseudo_random, _EVENT_KEY_INFO + b"\x01", "sha256")


def _associated(event_id: uuid.UUID, what: bytes) -> bytes:
    return b"civicline-audit-v2" + event_id.bytes + what


def seal_with(
    cipher: AESGCM, event_id: uuid.UUID, what: bytes, plain: bytes, nonce: bytes
) -> bytes:
    """`plain` sealed for one field of one event, `open_sealed`'s inverse. The caller sets up
    the event key's cipher (`event_cipher`) and draws a fresh nonce for every field (a batch
    sets up one cipher per set of citizens and draws all its nonces at once)."""
    return nonce + cipher.encrypt(nonce, plain, _associated(event_id, what))


def event_cipher(data_keys: Sequence[bytes]) -> AESGCM:
    return _aesgcm(event_key(data_keys))


def open_sealed(key: bytes, event_id: uuid.UUID, what: bytes, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_SIZE + 16:
        raise PrivacyError("sealed data is too short")
    try:
        return _aesgcm(key).decrypt(
            sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _associated(event_id, what)
        )
    except InvalidTag:
        raise PrivacyError("sealed data does not open with its citizens' keys") from None


@dataclass(frozen=True, slots=True)
class PrivacyKeys:
    """The two secrets of the audit service's privacy: pseudonyms and the master key."""

    pseudonymise: Pseudonymiser
    master: bytes = field(repr=False)

    @classmethod
    def from_secrets(cls, pseudonym_key: str, master_key: str) -> PrivacyKeys:
        return cls(
            Pseudonymiser(derive_secret(pseudonym_key, "civicline audit pseudonym")),
            derive_secret(master_key, "civicline audit master key"),
        )

    def subjects(self, citizens: Iterable[str]) -> tuple[bytes, ...]:
        return subjects_of(citizens, self.pseudonymise)
