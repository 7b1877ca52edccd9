"""Router state in Postgres: WhatsApp ids already seen, and contact state per citizen. Every
function runs in the caller's transaction and costs one round trip, whatever the batch size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from civicline.router.batch import ContactKey
from civicline.router.core import Route
from civicline.router.events import ContactState


async def claim_unseen(connection: asyncpg.Connection, dedup_keys: Sequence[str]) -> set[str]:
    """Record the keys; returns those not seen before. A failure later in the caller's
    transaction un-claims them."""
    if not dedup_keys:
        return set()
    rows = await connection.fetch(
        """INSERT INTO router_seen (dedup_key) SELECT unnest($1::text[])
           ON CONFLICT DO NOTHING RETURNING dedup_key""",
        list(dedup_keys),
    )
    return {row["dedup_key"] for row in rows}


async def lock_contacts(
    connection: asyncpg.Connection, keys: Sequence[ContactKey]
) -> dict[ContactKey, ContactState]:
    """The contacts' state, created if new and locked until the transaction ends (replicas
    must not race). `keys` sorted, so concurrent callers lock in one order."""
    if not keys:
        return {}
    numbers, citizens = [k[0] for k in keys], [k[1] for k in keys]
    await connection.execute(
        """INSERT INTO contacts (phone_number_id, citizen)
           SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT DO NOTHING""",
        numbers,
        citizens,
    )
    rows = await connection.fetch(
        """SELECT c.phone_number_id, c.citizen, c.language, c.opted_out, c.opted_out_at,
                  c.last_inbound_at, c.consent_changed_at
           FROM contacts c
           JOIN unnest($1::text[], $2::text[]) AS k(phone_number_id, citizen)
             USING (phone_number_id, citizen)
           ORDER BY c.phone_number_id, c.citizen
           FOR UPDATE OF c""",
        numbers,
        citizens,
    )
    return {
        (row["phone_number_id"], row["citizen"]): ContactState(
            language=row["language"],
            opted_out=row["opted_out"],
            opted_out_at=row["opted_out_at"],
            last_inbound_at=row["last_inbound_at"],
            consent_changed_at=row["consent_changed_at"],
        )
        for row in rows
    }


async def save_contacts(
    connection: asyncpg.Connection, contacts: Mapping[ContactKey, ContactState]
) -> None:
    if not contacts:
        return
    keys = sorted(contacts)
    states = [contacts[k] for k in keys]
    await connection.execute(
        """UPDATE contacts AS c
           SET language = u.language, opted_out = u.opted_out, opted_out_at = u.opted_out_at,
               last_inbound_at = u.last_inbound_at, consent_changed_at = u.consent_changed_at,
               updated_at = now()
           FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::timestamptz[],
                       $6::timestamptz[], $7::timestamptz[])
                AS u(phone_number_id, citizen, language, opted_out, opted_out_at,
                     last_inbound_at, consent_changed_at)
           WHERE c.phone_number_id = u.phone_number_id AND c.citizen = u.citizen""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [s.language for s in states],
        [s.opted_out for s in states],
        [s.opted_out_at for s in states],
        [s.last_inbound_at for s in states],
        [s.consent_changed_at for s in states],
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
            # Only the subscriptions given before it: one newer than the STOP stands.
            """UPDATE subscriptions SET subscribed = false, withdrawn_at = $3,
                      withdrawal_wamid = $4, updated_at = now()
               WHERE phone_number_id = $1 AND citizen = $2 AND subscribed
                 AND coalesce(consented_at, '-infinity') <= $3""",
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
