"""Identifiers shaped like Meta's: WhatsApp message ids (wamids) and Graph fbtrace ids."""

from __future__ import annotations

import base64
import secrets


def new_wamid() -> str:
    """A fresh wamid: `wamid.` plus 40 base64 characters, like the ids in Meta's webhooks."""
    return "wamid." + base64.b64encode(secrets.token_bytes(30)).decode("ascii")


def new_fbtrace_id() -> str:
    """A fresh fbtrace_id, the id Meta support asks for when a Graph call fails."""
    return "A" + secrets.token_urlsafe(16)[:22]
