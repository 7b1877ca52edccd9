"""The ingress's pure core: Meta's webhook signature and verification handshake.

The signature is HMAC-SHA256 of the exact raw body bytes. Never parse and re-serialise before
hashing: Meta escapes non-ASCII as \\uXXXX on the wire, and a re-serialisation changes those
bytes (reference §2). Comparison is constant-time, on bytes, against every configured secret so
a secret can be rotated without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_FORMAT = re.compile(rb"sha256=[0-9a-f]{64}")


def verify_signature(secrets: Iterable[str], body: bytes, header: str | None) -> bool:
    """True when `header` is `sha256=<hex>` of HMAC-SHA256(secret, body) for some secret."""
    if header is None:
        return False
    try:
        # An attacker controls the header: non-ASCII must be a clean refusal, and
        # compare_digest raises TypeError on non-ASCII str, so compare ASCII bytes only.
        presented = header.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    if _SIGNATURE_FORMAT.fullmatch(presented) is None:
        return False
    matched = False
    for secret in secrets:
        expected = b"sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
        # No early exit: the time taken does not reveal which secret matched.
        matched |= hmac.compare_digest(expected, presented)
    return matched


def handshake_challenge(query: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo for a valid subscription handshake, else None (answer 403)."""
    mode = query.get("hub.mode")
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge")
    if mode != "subscribe" or not challenge or not verify_token:
        return None
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        return None
    return challenge
