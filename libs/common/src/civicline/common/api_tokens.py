"""Bearer tokens of the HTTP APIs: the auditors' query API (audit service, /v1) and the
campaign operators' API (responder, /campaigns) check the same table.

`audit_api_token` holds a SHA-256 hash of each token with a name and a role (auditor or
operator); `civicline-audit token create|list|revoke` manages them, so a token is issued,
listed and revoked in one place, whichever API it opens, and never stored in clear.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import asyncpg

AUDITOR = "auditor"
OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Caller:
    token_id: uuid.UUID
    name: str
    role: str


def token_hash(token: str) -> bytes:
    """Tokens are 256 random bits, so one SHA-256 is enough: nothing to brute-force."""
    return hashlib.sha256(token.encode()).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None for any other header."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def find_caller(pool: asyncpg.Pool, token: str) -> Caller | None:
    """Whom `token` names, or None if it is unknown or revoked."""
    row = await pool.fetchrow(
        """SELECT token_id, name, role FROM audit_api_token
           WHERE token_hash = $1 AND revoked_at IS NULL""",
        token_hash(token),
    )
    return None if row is None else Caller(row["token_id"], row["name"], row["role"])
