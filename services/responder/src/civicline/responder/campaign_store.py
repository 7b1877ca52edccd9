"""Broadcast campaigns in Postgres: campaigns, their uploaded lists, one row per recipient (the
idempotency record, like the reply ledger) and the citizens reached for Meta's messaging tier.

Every change that the audit log must record is published inside the transaction that makes
it, before the commit (as the router does): a failed publish rolls the change back, and a
redone change publishes the same deterministic event id again.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from civicline.common.amqp import Publisher
from civicline.common.envelope import utc_now
from civicline.common.topology import BROADCAST_SKIPPED
from civicline.responder.campaigns import (
    CHANGE_OF_ACTION,
    CampaignSpec,
    Cursor,
    Progress,
    admit,
    advance,
    campaign_event,
    chunks,
    job_event,
    next_delivery_state,
    recipient_event,
    summarise,
    template_language,
    transition,
)

# A claim younger than this may belong to a live sender (a wave waits a moment for its
# slots; a Graph API call times out after 10 s, then the outcome is written). An older one was
# left by a sender that died: if it was only 'claimed', Meta was never called and the
# recipient is claimed again; if it was 'sending', whether Meta got the message is unknown and
# it is never sent again (reported in doubt).
BROADCAST_LEASE_SECONDS = 15.0
# Meta's messaging tier counts unique citizens over a moving 24 hours (reference §6).
TIER_WINDOW = timedelta(hours=24)
# Serialises tier accounting across replicas (pg_advisory_xact_lock key).
_TIER_LOCK = 0x6369_7669_6374
PAGE_SIZE = 500
JOB_SIZE = 100


@dataclass(frozen=True, slots=True)
class Campaign:
    id: uuid.UUID
    spec: CampaignSpec
    state: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expanded: bool

    def as_json(self, progress: Progress | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": str(self.id),
            "name": self.spec.name,
            "state": self.state,
            "spec": self.spec.as_json(),
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "expanded": self.expanded,
        }
        if progress is not None:
            document["progress"] = progress.as_json()
        return document


def _spec(document: Mapping[str, Any]) -> CampaignSpec:
    template = document["template"]
    audience = document["audience"]
    send_at = document.get("send_at")
    return CampaignSpec(
        name=document["name"],
        phone_number_id=document["phone_number_id"],
        template=template["name"],
        languages=dict(template["languages"]),
        fallback_language=template["fallback"],
        parameters={k: tuple(v) for k, v in template["parameters"].items()},
        topics=tuple(audience["topics"]),
        use_list=bool(audience["list"]),
        send_at=datetime.fromisoformat(send_at) if send_at else None,
    )


def _campaign(row: asyncpg.Record) -> Campaign:
    spec = row["spec"]
    return Campaign(
        id=row["id"],
        spec=_spec(orjson.loads(spec) if isinstance(spec, str) else spec),
        state=row["state"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expanded=row["expanded"],
    )


_COLUMNS = (
    "id, spec::text AS spec, state, created_by, created_at, updated_at, started_at, "
    "finished_at, expanded"
)


async def create(
    pool: asyncpg.Pool, publisher: Publisher, spec: CampaignSpec, created_by: str
) -> Campaign:
    campaign_id = uuid.uuid4()
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            """INSERT INTO campaigns (id, name, phone_number_id, spec, state, send_at, created_by)
               VALUES ($1, $2, $3, $4::jsonb, 'draft', $5, $6)
               RETURNING id, spec::text AS spec, state, created_by, created_at, updated_at,
                         started_at, finished_at, expanded""",
            campaign_id,
            spec.name,
            spec.phone_number_id,
            orjson.dumps(spec.as_json()).decode(),
            spec.send_at,
            created_by,
        )
        assert row is not None
        campaign = _campaign(row)
        await publisher.publish_envelope(
            campaign_event(
                "created",
                campaign_id,
                campaign.created_at,
                {"by": created_by, "spec": spec.as_json()},
            )
        )
    return campaign


async def get(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> Campaign | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM campaigns WHERE id = $1",  # noqa: S608 - constant columns
        campaign_id,
    )
    return _campaign(row) if row is not None else None


async def listing(pool: asyncpg.Pool, limit: int = 100) -> list[Campaign]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM campaigns ORDER BY created_at DESC LIMIT $1",  # noqa: S608
        limit,
    )
    return [_campaign(row) for row in rows]


async def progress(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> Progress:
    rows = await pool.fetch(
        """SELECT state, reason, error_code, count(*) AS n FROM campaign_recipients
           WHERE campaign_id = $1 GROUP BY state, reason, error_code""",
        campaign_id,
    )
    return summarise((r["state"], r["reason"], r["error_code"], r["n"]) for r in rows)


class NotFound(LookupError):
    pass


async def change(
    pool: asyncpg.Pool,
    publisher: Publisher,
    campaign_id: uuid.UUID,
    action: str,
    *,
    by: str,
) -> Campaign:
    """Apply an operator's (or the driver's) action; raises NotFound or TransitionError."""
    async with pool.acquire() as connection, connection.transaction():
        return await _change(connection, publisher, campaign_id, action, by=by)


async def _change(
    connection: asyncpg.Connection,
    publisher: Publisher,
    campaign_id: uuid.UUID,
    action: str,
    *,
    by: str,
) -> Campaign:
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM campaigns WHERE id = $1 FOR UPDATE",  # noqa: S608
        campaign_id,
    )
    if row is None:
        raise NotFound(str(campaign_id))
    current = _campaign(row)
    state = transition(current.state, action, started=current.started_at is not None)
    row = await connection.fetchrow(
        """UPDATE campaigns SET state = $2, updated_at = clock_timestamp(),
                  started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at,
                                    clock_timestamp()) ELSE started_at END,
                  finished_at = CASE WHEN $2 IN ('completed', 'cancelled')
                                     THEN clock_timestamp() END
           WHERE id = $1
           RETURNING id, spec::text AS spec, state, created_by, created_at, updated_at,
                     started_at, finished_at, expanded""",
        campaign_id,
        state,
    )
    assert row is not None
    updated = _campaign(row)
    details: dict[str, Any] = {"by": by, "from": current.state, "to": state}
    if state == "cancelled":
        # Nobody still waiting gets it; sends already with Meta keep their outcome.
        cancelled = await connection.fetchval(
            # Locked in wa_id order, as the senders' batch statements lock them.
            """WITH locked AS (SELECT wa_id FROM campaign_recipients
                               WHERE campaign_id = $1 AND state IN ('queued', 'claimed')
                               ORDER BY wa_id FOR UPDATE),
                    c AS (UPDATE campaign_recipients r SET state = 'cancelled',
                                 updated_at = now()
                          FROM locked WHERE r.campaign_id = $1 AND r.wa_id = locked.wa_id
                            AND r.state IN ('queued', 'claimed')
                          RETURNING 1)
               SELECT count(*) FROM c""",
            campaign_id,
        )
        details["recipients_cancelled"] = cancelled
    if state in ("completed", "cancelled"):
        details["progress"] = (await _progress(connection, campaign_id)).as_json()
    await publisher.publish_envelope(
        campaign_event(CHANGE_OF_ACTION[action], campaign_id, updated.updated_at, details)
    )
    return updated


async def _progress(connection: asyncpg.Connection, campaign_id: uuid.UUID) -> Progress:
    rows = await connection.fetch(
        """SELECT state, reason, error_code, count(*) AS n FROM campaign_recipients
           WHERE campaign_id = $1 GROUP BY state, reason, error_code""",
        campaign_id,
    )
    return summarise((r["state"], r["reason"], r["error_code"], r["n"]) for r in rows)


async def add_to_list(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, recipients: Iterable[tuple[str, str | None]]
) -> int:
    """Add uploaded recipients (a draft campaign's list) in batches; returns how many were new."""
    added = 0
    async with pool.acquire() as connection, connection.transaction():
        state = await connection.fetchval(
            "SELECT state FROM campaigns WHERE id = $1 FOR UPDATE", campaign_id
        )
        if state is None:
            raise NotFound(str(campaign_id))
        if state != "draft":
            raise ValueError(f"a list can be added to a draft campaign only; this one is {state}")
        batch: list[tuple[str, str | None]] = []

        async def flush() -> int:
            inserted = await connection.fetchval(
                """WITH i AS (INSERT INTO campaign_list (campaign_id, wa_id, language)
                              SELECT $1, u.wa_id, u.language
                              FROM unnest($2::text[], $3::text[]) AS u(wa_id, language)
                              ON CONFLICT DO NOTHING RETURNING 1)
                   SELECT count(*) FROM i""",
                campaign_id,
                [wa_id for wa_id, _ in batch],
                [language for _, language in batch],
            )
            batch.clear()
            return int(inserted)

        for recipient in recipients:
            batch.append(recipient)
            if len(batch) >= 5000:
                added += await flush()
        if batch:
            added += await flush()
    return added


# --- the driver: start, expand, complete ------------------------------------------------------


async def due_campaigns(pool: asyncpg.Pool) -> list[uuid.UUID]:
    rows = await pool.fetch(
        """SELECT id FROM campaigns WHERE state IN ('scheduled', 'running')
               AND (send_at IS NULL OR send_at <= now())
           ORDER BY created_at LIMIT 50"""
    )
    return [row["id"] for row in rows]


async def step(pool: asyncpg.Pool, publisher: Publisher, campaign_id: uuid.UUID) -> bool:
    """Move one campaign on by one step (start it, expand one page of its audience, or see
    that it is done); False when there was nothing to do or another replica holds it."""
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            """SELECT id, spec::text AS spec, state, created_by, created_at, updated_at,
                      started_at, finished_at, expanded, cursor_source, cursor_citizen
               FROM campaigns WHERE id = $1 AND state IN ('scheduled', 'running')
               FOR NO KEY UPDATE SKIP LOCKED""",
            campaign_id,
        )
        if row is None:
            return False
        campaign = _campaign(row)
        if campaign.state == "scheduled":
            await _change(connection, publisher, campaign_id, "start", by="scheduler")
            return True
        if not campaign.expanded:
            cursor = Cursor(row["cursor_source"], row["cursor_citizen"])
            await _expand_page(connection, publisher, campaign, cursor)
            return True
        unsettled = await connection.fetchval(
            """SELECT EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = $1
                              AND state IN ('queued', 'claimed', 'sending'))""",
            campaign_id,
        )
        if unsettled:
            return False
        await _change(connection, publisher, campaign_id, "complete", by="scheduler")
        return True


async def refresh_statistics(pool: asyncpg.Pool) -> list[str]:
    """Analyse the campaign tables that changed much since they were last analysed (migration
    0060 says why); returns those analysed now."""
    analysed = await pool.fetchval("SELECT campaign_statistics_refresh()")
    return list(analysed)


async def _audience_page(
    connection: asyncpg.Connection, campaign: Campaign, cursor: Cursor
) -> list[asyncpg.Record]:
    spec = campaign.spec
    topic = spec.source_topic(cursor.source)
    if topic is not None:
        return list(
            await connection.fetch(
                """SELECT s.citizen, k.language, coalesce(k.opted_out, false) AS opted_out
                   FROM subscriptions s
                   LEFT JOIN contacts k
                          ON k.phone_number_id = s.phone_number_id AND k.citizen = s.citizen
                   WHERE s.phone_number_id = $1 AND s.topic = $2 AND s.subscribed
                     AND s.citizen > $3
                   ORDER BY s.citizen LIMIT $4""",
                spec.phone_number_id,
                topic,
                cursor.citizen,
                PAGE_SIZE,
            )
        )
    return list(
        await connection.fetch(
            """SELECT l.wa_id AS citizen, coalesce(l.language, k.language) AS language,
                      coalesce(k.opted_out, false) AS opted_out
               FROM campaign_list l
               LEFT JOIN contacts k ON k.phone_number_id = $1 AND k.citizen = l.wa_id
               WHERE l.campaign_id = $2 AND l.wa_id > $3
               ORDER BY l.wa_id LIMIT $4""",
            spec.phone_number_id,
            campaign.id,
            cursor.citizen,
            PAGE_SIZE,
        )
    )


async def _expand_page(
    connection: asyncpg.Connection, publisher: Publisher, campaign: Campaign, cursor: Cursor
) -> None:
    """One page of the audience into campaign_recipients (a citizen already there, e.g. from
    another topic, is not added twice), and its new queued recipients onto the bus as jobs."""
    spec = campaign.spec
    page = await _audience_page(connection, campaign, cursor)
    citizens = [row["citizen"] for row in page]
    languages = [template_language(spec, row["language"]) for row in page]
    states = ["skipped" if row["opted_out"] else "queued" for row in page]
    reasons = ["opted_out" if row["opted_out"] else None for row in page]
    inserted = await connection.fetch(
        """INSERT INTO campaign_recipients (campaign_id, wa_id, via_topic, language, state, reason)
           SELECT $1, u.wa_id, $2, u.language, u.state, u.reason
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
                AS u(wa_id, language, state, reason)
           ON CONFLICT DO NOTHING RETURNING wa_id, language, state""",
        campaign.id,
        spec.source_topic(cursor.source),
        citizens,
        languages,
        states,
        reasons,
    )
    now = utc_now()
    queued = [(r["wa_id"], r["language"]) for r in inserted if r["state"] == "queued"]
    for chunk in chunks(queued, JOB_SIZE):
        await publisher.publish_envelope(job_event(campaign.id, chunk, now))
    for record in inserted:
        if record["state"] == "skipped":
            await publisher.publish_envelope(
                recipient_event(
                    BROADCAST_SKIPPED, campaign.id, record["wa_id"], now, {"reason": "opted_out"}
                )
            )
    following = advance(cursor, citizens, PAGE_SIZE, spec.sources)
    await connection.execute(
        """UPDATE campaigns SET cursor_source = $2, cursor_citizen = $3, expanded = $4
           WHERE id = $1""",
        campaign.id,
        following.source,
        following.citizen,
        following.done,
    )


# --- claims and outcomes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """What a sender may do for one recipient.

    kind: `claimed` (send now), `halted` (the campaign is not running), `deferred` (over the
    messaging tier), `in_progress` (another sender's live claim), `in_doubt` (a dead sender's
    claim: never sent again), `skipped` (opted out or unsubscribed since), `done` (settled
    before: state/wamid/error_code say how), `missing` (no such recipient: not committed yet,
    or its expansion was rolled back and done again in another job).
    """

    kind: str
    state: str | None = None
    wamid: str | None = None
    error_code: int | None = None
    reason: str | None = None


# A wave's recipients, locked in wa_id order, with what decides whether each may be sent.
# The statements of a wave name its rows by the primary key (campaign_id, wa_id = ANY): a plan
# may then never read the whole campaign for a wave of sixteen.
CLAIM_ROWS = """SELECT r.wa_id, r.state, r.claimed_by, r.wamid, r.error_code, r.reason,
           r.claimed_at > clock_timestamp() - make_interval(secs => $4) AS live,
           EXISTS (SELECT 1 FROM contacts k WHERE k.phone_number_id = $3
                      AND k.citizen = r.wa_id AND k.opted_out) AS opted_out,
           (r.via_topic IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM subscriptions s WHERE s.phone_number_id = $3
                  AND s.citizen = r.wa_id AND s.topic = ANY($5::text[])
                  AND s.subscribed)) AS unsubscribed
    FROM campaign_recipients r
    WHERE r.campaign_id = $1 AND r.wa_id = ANY($2::text[])
    ORDER BY r.wa_id FOR UPDATE OF r"""

# Rows locked in wa_id order first, as every multi-row statement here does: two statements
# locking overlapping rows in different orders would deadlock. The state is checked on the
# locked rows, so the update finds its rows by the key alone.
MARK_SENDING = """WITH u AS (SELECT * FROM unnest($2::text[], $3::text[]) AS u(wa_id, claimer)),
    locked AS (SELECT r.wa_id, r.state, r.claimed_by FROM campaign_recipients r
               WHERE r.campaign_id = $1 AND r.wa_id = ANY($2::text[])
               ORDER BY r.wa_id FOR UPDATE OF r)
    UPDATE campaign_recipients AS r SET state = 'sending', claimed_at = clock_timestamp()
    FROM u JOIN locked USING (wa_id)
    WHERE r.campaign_id = $1 AND r.wa_id = locked.wa_id AND locked.state = 'claimed'
      AND locked.claimed_by = u.claimer
    RETURNING r.wa_id"""

# As MARK_SENDING: outcomes of a batch of sends, on rows still 'sending'.
SETTLE = """WITH u AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::int[])
                   AS u(wa_id, state, wamid, error_code)),
    locked AS (SELECT r.wa_id, r.state FROM campaign_recipients r
               WHERE r.campaign_id = $1 AND r.wa_id = ANY($2::text[])
               ORDER BY r.wa_id FOR UPDATE OF r)
    UPDATE campaign_recipients AS r SET state = u.state, wamid = u.wamid,
           error_code = u.error_code, claimed_by = CASE WHEN u.state = 'queued'
           THEN NULL ELSE r.claimed_by END, updated_at = now()
    FROM u JOIN locked USING (wa_id)
    WHERE r.campaign_id = $1 AND r.wa_id = locked.wa_id AND locked.state = 'sending'"""


async def claim(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    requests: Sequence[tuple[str, str]],
    *,
    tier: int | None,
) -> dict[str, Claim]:
    """Claim recipients (wa_id, claimer) for sending, in one transaction. A claimed recipient
    is marked 'sending' (`mark_sending`) right before its Graph API call, as the reply ledger
    is, so a crash never sends twice, and loses only the calls in flight."""
    claimers = dict(requests)
    wa_ids = list(claimers)
    outcomes: dict[str, Claim] = {}
    async with pool.acquire() as connection, connection.transaction():
        campaign = await connection.fetchrow(
            "SELECT state, phone_number_id, spec->'audience'->'topics' AS topics "
            # KEY SHARE: claims do not block the driver's expansion (NO KEY UPDATE), but an
            # operator's pause or cancel (UPDATE) waits for them, and they see its outcome.
            "FROM campaigns WHERE id = $1 FOR KEY SHARE",
            campaign_id,
        )
        if campaign is None or campaign["state"] != "running":
            return dict.fromkeys(wa_ids, Claim("halted"))
        topics = orjson.loads(campaign["topics"]) if campaign["topics"] else []
        rows = await connection.fetch(
            CLAIM_ROWS,
            campaign_id,
            wa_ids,
            campaign["phone_number_id"],
            BROADCAST_LEASE_SECONDS,
            topics,
        )
        candidates: list[str] = []
        skips: dict[str, str] = {}
        doubts: list[str] = []
        for row in rows:
            wa_id = row["wa_id"]
            own = row["claimed_by"] == claimers[wa_id]
            if row["state"] == "claimed" and own:
                # Our own claim, whose commit answer was lost: still ours to send.
                outcomes[wa_id] = Claim("claimed")
            elif row["state"] in ("claimed", "sending") and row["live"] and not own:
                outcomes[wa_id] = Claim("in_progress")
            elif row["state"] in ("queued", "claimed"):
                # Queued, or claimed by a sender that died before calling Meta.
                if row["opted_out"] or row["unsubscribed"]:
                    skips[wa_id] = "opted_out" if row["opted_out"] else "unsubscribed"
                    outcomes[wa_id] = Claim("skipped", reason=skips[wa_id])
                else:
                    candidates.append(wa_id)
            elif row["state"] == "sending":
                doubts.append(wa_id)
                outcomes[wa_id] = Claim("in_doubt")
            else:
                outcomes[wa_id] = Claim(
                    "done", row["state"], row["wamid"], row["error_code"], row["reason"]
                )
        admitted = candidates
        if tier is not None and candidates:
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _TIER_LOCK)
            used = await connection.fetchval(
                "SELECT count(*) FROM messaging_reach WHERE last_sent_at > now() - $1::interval",
                TIER_WINDOW,
            )
            reached = await connection.fetch(
                """SELECT citizen FROM messaging_reach
                   WHERE citizen = ANY($1::text[]) AND last_sent_at > now() - $2::interval""",
                candidates,
                TIER_WINDOW,
            )
            admitted, deferred = admit(candidates, [r["citizen"] for r in reached], used, tier)
            outcomes.update(dict.fromkeys(deferred, Claim("deferred")))
        if admitted:
            await connection.execute(
                """UPDATE campaign_recipients AS r SET state = 'claimed', claimed_by = u.claimer,
                          claimed_at = clock_timestamp(), updated_at = now()
                   FROM unnest($2::text[], $3::text[]) AS u(wa_id, claimer)
                   WHERE r.campaign_id = $1 AND r.wa_id = ANY($2::text[]) AND r.wa_id = u.wa_id""",
                campaign_id,
                admitted,
                [claimers[wa_id] for wa_id in admitted],
            )
            await connection.execute(
                """INSERT INTO messaging_reach (citizen, last_sent_at)
                   SELECT unnest($1::text[]), now()
                   ON CONFLICT (citizen) DO UPDATE SET last_sent_at = now()""",
                admitted,
            )
            outcomes.update(dict.fromkeys(admitted, Claim("claimed")))
        if skips:
            await connection.execute(
                """UPDATE campaign_recipients AS r SET state = 'skipped', reason = u.reason,
                          updated_at = now()
                   FROM unnest($2::text[], $3::text[]) AS u(wa_id, reason)
                   WHERE r.campaign_id = $1 AND r.wa_id = ANY($2::text[]) AND r.wa_id = u.wa_id""",
                campaign_id,
                list(skips),
                list(skips.values()),
            )
        if doubts:
            await connection.execute(
                """UPDATE campaign_recipients SET state = 'in_doubt', updated_at = now()
                   WHERE campaign_id = $1 AND wa_id = ANY($2::text[]) AND state = 'sending'
                   """,
                campaign_id,
                doubts,
            )
    for wa_id in wa_ids:
        # Not (yet) there: the expansion publishes a job just before its transaction commits.
        outcomes.setdefault(wa_id, Claim("missing"))
    return outcomes


async def mark_sending(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, requests: Sequence[tuple[str, str]]
) -> set[str]:
    """Mark claimed recipients (wa_id, claimer) as being sent, right before their Graph API
    calls; returns those marked (a recipient cancelled since is not)."""
    rows = await pool.fetch(
        MARK_SENDING,
        campaign_id,
        [wa_id for wa_id, _ in requests],
        [claimer for _, claimer in requests],
    )
    return {row["wa_id"] for row in rows}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one send: 'sent' with Meta's wamid, 'failed' with its error code, or
    'queued' (Meta did not take it and it may be tried again: the claim is released)."""

    wa_id: str
    state: str
    wamid: str | None = None
    error_code: int | None = None


async def settle(pool: asyncpg.Pool, campaign_id: uuid.UUID, outcomes: Sequence[Outcome]) -> None:
    await pool.execute(
        SETTLE,
        campaign_id,
        [o.wa_id for o in outcomes],
        [o.state for o in outcomes],
        [o.wamid for o in outcomes],
        [o.error_code for o in outcomes],
    )


# --- delivery statuses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusMatch:
    campaign_id: uuid.UUID
    wa_id: str
    state: str | None  # the new state, or None when the status changed nothing


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    wamid: str
    status: str
    error_code: int | None
    recipient: str | None  # the citizen Meta names, to tell "not ours" from "not recorded yet"


@dataclass(frozen=True, slots=True)
class StatusJoin:
    match: StatusMatch | None
    pending: bool  # no match, but a campaign send to this citizen is being recorded


async def apply_statuses(
    connection: asyncpg.Connection, updates: Sequence[StatusUpdate]
) -> list[StatusJoin]:
    """Join Meta's statuses to the campaign recipients sent those wamids, in three statements
    whatever their number (most are statuses of replies, which match no recipient): the
    matching recipients locked in wa_id order, their new states written at once, and for the
    rest whether a send to that citizen is between its Graph API call and its record.
    Statuses are applied in order: two of one message in a batch, one after the other."""
    rows = await connection.fetch(
        """SELECT campaign_id, wa_id, state, wamid FROM campaign_recipients
           WHERE wamid = ANY($1::text[]) ORDER BY campaign_id, wa_id FOR UPDATE""",
        sorted({u.wamid for u in updates}),
    )
    current = {row["wamid"]: (row["campaign_id"], row["wa_id"], row["state"]) for row in rows}
    joins: list[StatusJoin] = []
    changed: dict[str, tuple[uuid.UUID, str, str, int | None]] = {}
    for update in updates:
        found = current.get(update.wamid)
        if found is None:
            joins.append(StatusJoin(None, pending=False))
            continue
        campaign_id, wa_id, state = found
        new = next_delivery_state(state, update.status)
        if new is not None:
            current[update.wamid] = (campaign_id, wa_id, new)
            code = update.error_code if new == "failed" else None
            changed[update.wamid] = (campaign_id, wa_id, new, code)
        joins.append(StatusJoin(StatusMatch(campaign_id, wa_id, new), pending=False))
    if changed:
        values = list(changed.values())
        await connection.execute(
            """UPDATE campaign_recipients AS r SET state = u.state, updated_at = now(),
                      error_code = CASE WHEN u.state = 'failed' THEN u.error_code
                                        ELSE r.error_code END,
                      reason = CASE WHEN u.state = 'failed' THEN 'after_sent' ELSE r.reason END
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[])
                    AS u(campaign_id, wa_id, state, error_code)
               WHERE r.campaign_id = u.campaign_id AND r.wa_id = u.wa_id""",
            [v[0] for v in values],
            [v[1] for v in values],
            [v[2] for v in values],
            [v[3] for v in values],
        )
    unmatched = {
        u.recipient
        for u, j in zip(updates, joins, strict=True)
        if j.match is None and u.recipient is not None
    }
    if unmatched:
        sending = {
            row["wa_id"]
            for row in await connection.fetch(
                """SELECT DISTINCT wa_id FROM campaign_recipients
                   WHERE wa_id = ANY($1::text[]) AND state = 'sending'""",
                sorted(unmatched),
            )
        }
        joins = [
            StatusJoin(None, pending=u.recipient in sending) if j.match is None else j
            for u, j in zip(updates, joins, strict=True)
        ]
    return joins


RECIPIENT_STATES = frozenset(
    {
        "queued",
        "claimed",
        "sending",
        "sent",
        "delivered",
        "read",
        "failed",
        "in_doubt",
        "skipped",
        "cancelled",
    }
)


async def recipients(
    connection: asyncpg.Connection, campaign_id: uuid.UUID, state: str
) -> AsyncIterator[asyncpg.Record]:
    """A campaign's recipients in `state`, in wa_id order, read through a server-side cursor
    (never all in memory); call inside a transaction."""
    async for row in connection.cursor(
        """SELECT wa_id, language, wamid, error_code, reason FROM campaign_recipients
           WHERE campaign_id = $1 AND state = $2 ORDER BY wa_id""",
        campaign_id,
        state,
        prefetch=1000,
    ):
        yield row
