"""Signed tree heads as C2SP checkpoints in C2SP signed notes, with Ed25519 keys.

A checkpoint is the note text
    <origin>\\n<tree size>\\n<base64 root hash>\\ntime <RFC 3339 UTC>\\n
followed by a blank line and one line per signature, `— <key name> <base64(key id || sig)>`.
The key id is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public key), and keys
are written as Go's `golang.org/x/mod/sumdb/note` writes them, so existing transparency-log
tooling and witnesses read both. The `time` line is a checkpoint extension line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from civicline.audit.merkle import HASH_SIZE

ED25519 = 0x01
SIGNATURE_PREFIX = "— "  # U+2014 EM DASH, then a space
TIME_EXTENSION = "time "


class CheckpointError(ValueError):
    """A key, note or checkpoint that is malformed or whose signature does not verify."""


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise CheckpointError(f"key name {name!r} must be non-empty, without spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class Verifier:
    """The public half: what an auditor holds, `<name>+<key id hex>+<base64(0x01 || key)>`."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def encode(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise CheckpointError("a verifier key is <name>+<key id>+<base64 key>")
        name, hex_id, encoded = parts
        _check_name(name)
        raw = _b64decode(encoded, "the verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise CheckpointError("the verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id.lower():
            raise CheckpointError("the verifier key's id does not match its key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signer:
    """The private half, from `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>`."""

    name: str
    seed: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> Signer:
        _check_name(name)
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name, seed)

    @classmethod
    def parse(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CheckpointError("a signing key is PRIVATE+KEY+<name>+<key id>+<base64 key>")
        name, hex_id, encoded = parts[2:]
        _check_name(name)
        raw = _b64decode(encoded, "the signing key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise CheckpointError("the signing key is not an Ed25519 key")
        signer = cls(name, raw[1:])
        if signer.verifier.key_id.hex() != hex_id.lower():
            raise CheckpointError("the signing key's id does not match its key")
        return signer

    def encode(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{encoded}"

    @property
    def verifier(self) -> Verifier:
        public = (
            Ed25519PrivateKey.from_private_bytes(self.seed)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        return Verifier(self.name, public)

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def sign_note(text: str, signer: Signer) -> str:
    if not text.endswith("\n") or "\n\n" in text:
        raise CheckpointError("note text must end in a newline and have no blank line")
    signature = signer.verifier.key_id + signer.sign(text.encode())
    return f"{text}\n{SIGNATURE_PREFIX}{signer.name} {base64.b64encode(signature).decode()}\n"


def open_note(note: str, verifier: Verifier) -> str:
    """The note's text if `verifier`'s key signed it; CheckpointError otherwise."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note: no blank line before the signatures")
    text, signature_lines = note[: split + 1], note[split + 2 :].splitlines()
    if not signature_lines:
        raise CheckpointError("the note carries no signature")
    for line in signature_lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(f"malformed signature line {line!r}")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        raw = _b64decode(encoded, "a signature")
        if len(raw) < 5:
            raise CheckpointError("a signature is too short")
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue  # another key's signature (a witness's cosignature, say)
        if not verifier.verify(text.encode(), raw[4:]):
            raise CheckpointError(f"the signature by {name} does not verify")
        return text
    raise CheckpointError(f"the note is not signed by {verifier.name} ({verifier.key_id.hex()})")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: datetime | None = None

    def text(self) -> str:
        lines = [self.origin, str(self.tree_size), base64.b64encode(self.root_hash).decode()]
        if self.timestamp is not None:
            stamp = self.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(TIME_EXTENSION + stamp)
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise CheckpointError("a checkpoint has an origin, a size and a root hash")
        origin, size_text, root_text, *extensions = lines[:-1]
        if not origin:
            raise CheckpointError("a checkpoint's origin must not be empty")
        if not size_text.isdigit() or (size_text.startswith("0") and size_text != "0"):
            raise CheckpointError(f"tree size {size_text!r} is not a decimal number")
        root_hash = _b64decode(root_text, "the root hash")
        if len(root_hash) != HASH_SIZE:
            raise CheckpointError("the root hash is not a SHA-256 hash")
        timestamp = None
        for line in extensions:
            if line.startswith(TIME_EXTENSION):
                try:
                    timestamp = datetime.fromisoformat(line.removeprefix(TIME_EXTENSION))
                except ValueError:
                    raise CheckpointError(f"bad time extension {line!r}") from None
        return cls(origin, int(size_text), root_hash, timestamp)


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    if checkpoint.origin != signer.name:
        raise CheckpointError("a log signs checkpoints with the key named after its origin")
    return sign_note(checkpoint.text(), signer)


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """Parse a signed checkpoint after checking `verifier` signed it for its own origin."""
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if checkpoint.origin != verifier.name:
        raise CheckpointError(
            f"checkpoint origin {checkpoint.origin!r} is not the key's log {verifier.name!r}"
        )
    return checkpoint
