"""Posting signed webhooks to the ingress, as Meta does."""

from __future__ import annotations

from typing import Final

import aiohttp

from civicline.simulator.signing import SIGNATURE_HEADER, sign
from civicline.simulator.webhooks import DEFAULT_PHONE_NUMBER_ID, text_message_webhook

# Meta's webhook requests identify themselves with this user agent.
USER_AGENT: Final = "facebookexternalua"


async def send_webhook(
    url: str,
    body: bytes,
    secret: str,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout: float = 10.0,
) -> int:
    """POST `body` exactly as given, signed with `secret`; returns the HTTP status."""
    headers = {
        SIGNATURE_HEADER: sign(body, secret),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    if session is None:
        async with aiohttp.ClientSession() as own_session:
            return await _post(own_session, url, body, headers, client_timeout)
    return await _post(session, url, body, headers, client_timeout)


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
) -> int:
    async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
        await response.read()
        return response.status


async def send_citizen_message(
    url: str,
    secret: str,
    *,
    wa_id: str,
    text: str,
    profile_name: str | None = None,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, str]:
    """Send one citizen text message webhook; returns (HTTP status, the message's wamid)."""
    body, wamid = text_message_webhook(
        wa_id=wa_id, text=text, profile_name=profile_name, phone_number_id=phone_number_id
    )
    return await send_webhook(url, body, secret, session=session), wamid
