"""Router state in Postgres: WhatsApp ids already seen, and contact state per citizen."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from civicline.router.core import Route
from civicline.router.events import ContactState


async def claim_unseen(connection: asyncpg.Connection, dedup_keys: Sequence[str]) -> set[str]:
    """Record the keys; returns those not seen before. Runs in the caller's transaction, so a
    failure later in the handler un-claims them."""
    if not dedup_keys:
        return set()
    rows = await connection.fetch(
        """INSERT INTO router_seen (dedup_key) SELECT unnest($1::text[])
           ON CONFLICT DO NOTHING RETURNING dedup_key""",
        list(dedup_keys),
    )
    return {row["dedup_key"] for row in rows}


async def lock_contact(
    connection: asyncpg.Connection, phone_number_id: str, citizen: str
) -> ContactState:
    """The contact's state, locked until the transaction ends (replicas must not race)."""
    await connection.execute(
        """INSERT INTO contacts (phone_number_id, citizen) VALUES ($1, $2)
           ON CONFLICT DO NOTHING""",
        phone_number_id,
        citizen,
    )
    row = await connection.fetchrow(
        """SELECT language, opted_out, opted_out_at, last_inbound_at FROM contacts
           WHERE phone_number_id = $1 AND citizen = $2 FOR UPDATE""",
        phone_number_id,
        citizen,
    )
    assert row is not None
    return ContactState(
        language=row["language"],
        opted_out=row["opted_out"],
        opted_out_at=row["opted_out_at"],
        last_inbound_at=row["last_inbound_at"],
    )


async def save_contact(
    connection: asyncpg.Connection, phone_number_id: str, citizen: str, state: ContactState
) -> None:
    await connection.execute(
        """UPDATE contacts SET language = $3, opted_out = $4, opted_out_at = $5,
                               last_inbound_at = $6, updated_at = now()
           WHERE phone_number_id = $1 AND citizen = $2""",
        phone_number_id,
        citizen,
        state.language,
        state.opted_out,
        state.opted_out_at,
        state.last_inbound_at,
    )


async def record_consent(
    connection: asyncpg.Connection,
    phone_number_id: str,
    citizen: str,
    route: Route,
    *,
    wamid: str,
    at: datetime,
) -> None:
    """Store a subscription, a withdrawal of one topic, or (STOP) of every topic, with the
    message that gave or withdrew consent. A change older than the row's last one (Meta may
    deliver messages out of order) does not overwrite it."""
    if route.intent == "opt_out":
        await connection.execute(
            """UPDATE subscriptions SET subscribed = false, withdrawn_at = $3,
                      withdrawal_wamid = $4, updated_at = now()
               WHERE phone_number_id = $1 AND citizen = $2 AND subscribed""",
            phone_number_id,
            citizen,
            at,
            wamid,
        )
        return
    if route.intent not in ("subscribe", "unsubscribe") or route.topic is None:
        return
    subscribed = route.intent == "subscribe"
    await connection.execute(
        """INSERT INTO subscriptions AS s (phone_number_id, topic, citizen, subscribed,
                                           consented_at, consent_wamid,
                                           withdrawn_at, withdrawal_wamid)
           VALUES ($1, $2, $3, $4, CASE WHEN $4 THEN $5::timestamptz END,
                   CASE WHEN $4 THEN $6 END, CASE WHEN NOT $4 THEN $5::timestamptz END,
                   CASE WHEN NOT $4 THEN $6 END)
           ON CONFLICT (phone_number_id, topic, citizen) DO UPDATE SET
               subscribed = EXCLUDED.subscribed,
               consented_at = coalesce(EXCLUDED.consented_at, s.consented_at),
               consent_wamid = coalesce(EXCLUDED.consent_wamid, s.consent_wamid),
               withdrawn_at = CASE WHEN EXCLUDED.subscribed THEN NULL
                                   ELSE EXCLUDED.withdrawn_at END,
               withdrawal_wamid = CASE WHEN EXCLUDED.subscribed THEN NULL
                                       ELSE EXCLUDED.withdrawal_wamid END,
               updated_at = now()
           WHERE greatest(coalesce(s.consented_at, '-infinity'),
                          coalesce(s.withdrawn_at, '-infinity')) <= $5::timestamptz""",
        phone_number_id,
        route.topic,
        citizen,
        subscribed,
        at,
        wamid,
    )
